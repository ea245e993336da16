"""Tests for wsl.train.config and wsl.train.config_files: parsing, overrides, extends:, the shipped configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from wsl.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_config_defaults_overrides_and_round_trip(tmp_path: Path) -> None:
    from wsl.train.config import Config, load_config

    p = tmp_path / "exp.yaml"
    p.write_text("data: {zoo: /z}\nmodel: nggnn\noptim: {lr: 1e-3}\n")  # YAML reads 1e-3 as a string
    cfg = load_config(p, ["model.hidden=64", "train.epochs=5", "augment.permute=true", "optim.betas=[0.8, 0.9]",
                          "data.max_train=null", "train.threads=2"])
    assert cfg.model.name == "nggnn" and cfg.model.params == {"hidden": 64}
    assert cfg.optim.lr == 1e-3 and cfg.train.epochs == 5 and cfg.augment.permute is True
    assert cfg.optim.betas == (0.8, 0.9) and cfg.train.threads == 2
    assert cfg.output == str(Path("runs") / "exp")
    again = Config.from_dict(cfg.to_dict())
    assert again == cfg


@pytest.mark.parametrize("override, match", [
    ("optim.lrr=1", "unknown key 'optim.lrr'; did you mean 'optim.lr'"),
    ("trian.epochs=1", "unknown key 'trian'; did you mean 'train'"),
    ("train.epochs=abc", "train.epochs must be an integer"),
    ("train.epochs=0", "train.epochs must be > 0"),
    ("optim.name=rmsprop", "optim.name is 'rmsprop'; valid: adamw, adam, sgd"),
    ("data.checkpoints=first", "data.checkpoints"),
    ("train.device=tpu", "train.device"),
    ("data.val_split=train", "must differ"),
    ("augment.noise=-1", "augment.noise must be >= 0"),
    ("optim", "expected key=value"),
    ("data.zoo.x=1", "'data.zoo' is not a section"),
])
def test_config_errors_name_the_key(override: str, match: str) -> None:
    from wsl.train.config import load_config

    with pytest.raises(ConfigError, match=match.replace("(", r"\(").replace("[", r"\[")):
        load_config(raw={"data": {"zoo": "/z"}, "model": {"name": "nggnn"}}, overrides=[override])


def test_config_required_keys() -> None:
    from wsl.train.config import load_config

    with pytest.raises(ConfigError, match="data.zoo is required"):
        load_config(raw={"model": "np"})
    with pytest.raises(ConfigError, match="model.name is required"):
        load_config(raw={"data": {"zoo": "/z"}})


def test_shipped_configs_parse() -> None:
    from wsl.tasks.baselines import BASELINES
    from wsl.train.config import load_config
    from wsl.train.registry import check_params, resolve_model

    files = sorted((REPO / "configs" / "generalization").glob("*.yaml"))
    assert {"tiny.yaml", "gs_np.yaml", "gs_hnp.yaml", "gs_nft.yaml", "gs_nggnn.yaml", "gs_ngt.yaml",
            "wild_nggnn.yaml", "wild_ngt.yaml"} <= {f.name for f in files}
    for f in files:
        cfg = load_config(f)
        if cfg.model.name not in BASELINES:
            try:
                check_params(resolve_model(cfg.model.name), cfg.model.params)
            except ConfigError as exc:
                if "not available" not in str(exc):
                    raise


def test_shipped_configs_read_the_readme_zoo_paths_on_one_thread() -> None:
    """Every shipped config reads its zoo from zoos-out/<name>, where the README's `wsl zoo generate` puts it."""
    from wsl.train.config import load_config

    files = sorted((REPO / "configs" / "generalization").glob("*.yaml"))
    cfgs = {f.name: load_config(f) for f in files}
    zoos = {name: cfg.data.zoo for name, cfg in cfgs.items()}
    assert len(zoos) == 33
    assert {cfg.train.threads for cfg in cfgs.values()} == {1}  # the thread count of the README's numbers
    for name, zoo in zoos.items():
        want = "zoos-out/digits-cnn-gs" if name.startswith(("gs_", "tiny")) else "zoos-out/digits-cnn-wild"
        assert zoo == want, name
        assert (REPO / "zoos" / f"{Path(zoo).name}.yaml").is_file()  # the recipe that creates it


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_config_extends_chains_merge_and_overrides_apply_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from wsl.train.config import load_config

    write(tmp_path / "bases" / "zoo.yaml", "data: {zoo: zoos-out/z, target: gap}\ntrain: {seed: 3, epochs: 7}\n")
    write(tmp_path / "bases" / "learned.yaml",
          "extends: zoo.yaml\noptim: {lr: 0.01, betas: [0.5, 0.6]}\nmodel: {name: hnp, channels: [8, 8], head_hidden: [4]}\n")
    write(tmp_path / "bases" / "other.yaml", "augment: {noise: 0.1}\ntrain: {epochs: 9}\n")
    top = write(tmp_path / "exps" / "run.yaml",
                "extends: [../bases/learned.yaml, ../bases/other.yaml]\n"
                "optim: {betas: [0.7, 0.8]}\nmodel: {channels: [16]}\ntrain: {patience: 2}\n")
    monkeypatch.chdir(tmp_path / "exps")  # extends resolve from the including file, not from here
    cfg = load_config(top, ["train.epochs=11"])
    assert cfg.data.zoo == "zoos-out/z" and cfg.data.target == "gap"  # from the base of the base
    assert cfg.optim.lr == 0.01 and cfg.optim.betas == (0.7, 0.8)  # mappings merge, lists replace
    assert cfg.model.name == "hnp" and cfg.model.params == {"channels": [16], "head_hidden": [4]}
    assert cfg.augment.noise == 0.1 and cfg.train.seed == 3 and cfg.train.patience == 2
    assert cfg.train.epochs == 11  # later bases win over earlier ones (9 over 7), the override over all
    assert load_config(top).train.epochs == 9
    assert cfg.output == str(Path("runs") / "run")  # the file's own stem, never a base's
    other = write(tmp_path / "exps" / "gbt.yaml", "extends: run.yaml\nmodel: {name: statnn_gbt}\n")
    cfg = load_config(other)  # a different model name replaces the section: no hnp arguments on a baseline
    assert cfg.model.name == "statnn_gbt" and cfg.model.params == {}


def test_config_extends_errors_name_the_files(tmp_path: Path) -> None:
    from wsl.train.config import load_config

    a = write(tmp_path / "a.yaml", "extends: sub/b.yaml\nmodel: np\n")
    write(tmp_path / "sub" / "b.yaml", "extends: ../a.yaml\n")
    with pytest.raises(ConfigError, match=r"'extends' cycle: .*a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        load_config(a)
    own = write(tmp_path / "own.yaml", "extends: own.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(own)
    missing = write(tmp_path / "m.yaml", "extends: nope.yaml\n")
    with pytest.raises(ConfigError, match=r"m\.yaml: extends 'nope\.yaml', but .*nope\.yaml is not a file"):
        load_config(missing)
    for bad in ("extends: 3\n", "extends: []\n", "extends: {a: 1}\n"):
        with pytest.raises(ConfigError, match="'extends' must be a file name or a list"):
            load_config(write(tmp_path / "bad.yaml", bad))
    write(tmp_path / "list.yaml", "[1]\n")
    with pytest.raises(ConfigError, match=r"list\.yaml: the config must be a mapping at the top level, got list"):
        load_config(write(tmp_path / "x.yaml", "extends: list.yaml\n"))


def test_missing_zoo_says_which_command_creates_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from wsl.cli import main
    from wsl.train.config_files import check_zoo_path

    monkeypatch.chdir(tmp_path)
    write(tmp_path / "zoos" / "digits-cnn-gs.yaml", "name: digits-cnn-gs\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: data\.zoo zoos-out/digits-cnn-gs does not exist \(relative to "
                       r"the current directory .*\); create it with `wsl zoo generate zoos/digits-cnn-gs\.yaml -o "
                       r"zoos-out/digits-cnn-gs`"):
        check_zoo_path("zoos-out/digits-cnn-gs", "c.yaml")
    with pytest.raises(ConfigError, match=r"wsl zoo generate zoos/RECIPE\.yaml -o /nowhere/z` from the repository"):
        check_zoo_path("/nowhere/z")
    check_zoo_path("hf://datasets/org/zoo")  # URIs are resolved later
    (tmp_path / "zoos-out" / "digits-cnn-gs").mkdir(parents=True)
    check_zoo_path("zoos-out/digits-cnn-gs")  # exists: whether it is a zoo is load_zoo's to say
    rc = main(["train", str(REPO / "configs" / "generalization" / "gs_hnp.yaml"), "data.zoo=zoos-out/gone"])
    assert rc != 0 and "data.zoo zoos-out/gone does not exist" in capsys.readouterr().err
