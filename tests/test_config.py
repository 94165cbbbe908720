import pytest

from mpips import config


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
