"""pytest set-up shared by the tests."""


def pytest_ignore_collect(collection_path, config):
    # test_van_mpi.py runs on every rank of an mpiexec (pytest-mpi, --with-mpi):
    # tests/test_kv_mpi.py starts that run; a plain pytest run leaves it out.
    if collection_path.name == "test_van_mpi.py" and not config.getoption("with_mpi", False):
        return True
    return None


def pytest_sessionstart(session):
    # The tests start many ranks by mpiexec directly: compile mpips's modules
    # once, as mpips run does (mpips.launch.compile_bytecode).
    from mpips.launch import compile_bytecode
    compile_bytecode()
