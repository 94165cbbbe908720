import pytest

from mpips import config
from tests.mpitools import ROOT, run_py


def write(tmp_path, text):
    p = tmp_path / "job.toml"
    p.write_text(text)
    return p


def test_defaults_and_overrides(tmp_path):
    p = write(tmp_path, '[job]\nname = "x"\n[layout]\nservers = 2\n')
    cfg = config.load(p, ["layout.virtual_servers=4", "job.output=runs/elsewhere",
                          "transport.timeout=5"])
    assert cfg.job.name == "x" and cfg.layout.servers == 2
    assert cfg.layout.virtual_servers == 4 and cfg.job.output == "runs/elsewhere"
    assert cfg.transport.timeout == 5.0  # ints are accepted where numbers are wanted


@pytest.mark.parametrize("text,match", [
    ("[nope]\nx = 1\n", r"job.toml: unknown section \[nope\]"),
    ("[layout]\nserverz = 1\n", r"job.toml: unknown key \[layout\] serverz"),
    ('[layout]\nservers = "two"\n', r"job.toml: \[layout\] servers must be an integer"),
    ("[layout]\nservers = -1\n", r"job.toml: \[layout\] servers = -1 must be >= 0"),
    ("[layout]\nspread_hosts = 1\n", r"spread_hosts must be true or false"),
    ("[layout\n", r"job.toml: not valid TOML"),
])
def test_bad_job_files_name_key_and_file(tmp_path, text, match):
    with pytest.raises(config.ConfigError, match=match):
        config.load(write(tmp_path, text))


def test_bad_overrides():
    with pytest.raises(config.ConfigError, match=r"-o layout.servers=x: \[layout\] servers"):
        config.load(None, ["layout.servers=x"])
    with pytest.raises(config.ConfigError, match="section.key=value"):
        config.load(None, ["servers"])
    with pytest.raises(config.ConfigError, match=r"unknown key \[job\] bogus"):
        config.load(None, ["job.bogus=1"])


def test_missing_file():
    with pytest.raises(config.ConfigError, match="nothere.toml: job file not found"):
        config.load("nothere.toml")


def test_every_declared_section_is_listed_where_it_is_declared():
    """config.SECTIONS names each section's module: a reader finds them all
    there, and no job depends on which modules happen to be imported."""
    import ast

    declared = {}
    for path in (ROOT / "mpips").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "section" \
                    and node.args and isinstance(node.args[0], ast.Constant):
                module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
                declared[node.args[0].value] = module.removesuffix(".__init__")
    assert declared == config.SECTIONS


def test_a_fresh_process_sees_every_section():
    proc = run_py("-c", "from mpips import config\n"
                  "cfg = config.load(None)\n"
                  "print(sorted(cfg.as_dict()))")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(sorted(config.SECTIONS))


def test_mpips_config_prints_a_job_file_of_every_default(tmp_path):
    import tomllib

    proc = run_py("-m", "mpips", "config")
    assert proc.returncode == 0, proc.stderr
    job = tmp_path / "all.toml"
    job.write_text(proc.stdout)
    parsed = tomllib.loads(proc.stdout)
    assert sorted(parsed) == sorted(config.SECTIONS)
    assert config.load(job).as_dict() == config.load(None).as_dict()
    assert "# number of server ranks" in proc.stdout  # the help, as comments
    one = run_py("-m", "mpips", "config", "--app", "sketch")
    assert one.returncode == 0, one.stderr
    sections = sorted(tomllib.loads(one.stdout))
    assert "sketch" in sections and "lda" not in sections and "linear" not in sections


@pytest.mark.parametrize("text", ["inf", "-inf", "nan"])
def test_a_number_that_is_not_finite_is_refused_naming_the_key(tmp_path, text):
    """TOML has inf and nan; a learning rate of either trained NaN weights
    and ended "done"."""
    job = tmp_path / "job.toml"
    job.write_text(f"[linear]\nalpha = {text}\n")
    with pytest.raises(config.ConfigError, match=r"job.toml: \[linear\] alpha must be a finite"):
        config.load(str(job), [])
