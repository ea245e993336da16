"""Pushing predictors and zoos to the Hugging Face Hub, with generated cards.

* :func:`push_predictor` (``wsl push DIR hf://ORG/NAME``): a predictor
  directory (``config.json``, ``model.safetensors``, ``space.json``) plus a
  model card (:func:`wsl.hub.cards.predictor_card`) in one commit.
* :func:`push_zoo` (``wsl zoo push DIR hf://datasets/ORG/NAME``): the native
  zoo files unchanged (the shards the card lists, ``metadata.jsonl``,
  ``zoo.json``) plus a dataset card. Large zoos go up in several commits of at
  most ``files_per_commit`` files (``HfApi.create_commit`` with
  ``CommitOperationAdd`` batches): shards first, then ``metadata.jsonl``,
  ``zoo.json`` and ``README.md`` in a last commit, so the repository never
  holds a card that lists missing shards. Re-running after an interruption
  re-sends nothing already there: the Hub's preupload answer carries each
  remote file's id and unchanged files are dropped from the commit.
* :func:`push_hyper` (``wsl push RUN hf://ORG/NAME`` on a ``wsl hyper train``
  run directory): ``hyper.safetensors``, ``base.safetensors``, ``config.json``,
  ``metrics.json``, the plots and a generated model card, in one commit;
  ``load_hyper("hf://ORG/NAME")`` reads it back.
* :class:`HubPredictor`: ``from_pretrained`` / ``save_pretrained`` /
  ``push_to_hub`` for predictors, in the style of ``PyTorchModelHubMixin``.

The repository is created if missing (``--private`` then applies) and a
``--revision`` branch is created from ``main`` if missing. A write token is
needed (``HF_TOKEN`` or ``hf auth login``).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wsl.errors import WslError, ZooFormatError
from wsl.hub.uri import HubAccessError, HubOfflineError, HubRef, is_commit, is_hub_uri, parse_target, parse_uri

__all__ = ["HubPredictor", "PushReport", "push_hyper", "push_predictor", "push_zoo", "register_push"]

MAX_FILES_PER_COMMIT = 100


@dataclass
class PushReport:
    """What a push did: the destination, its commits (URLs) and the number of files sent."""

    uri: str
    commits: list[str] = field(default_factory=list)
    files: int = 0

    @property
    def commit_url(self) -> str:
        return self.commits[-1] if self.commits else ""


def _hf_api(ref: HubRef) -> Any:
    from wsl.hub.uri import huggingface, endpoint, is_offline

    hf = huggingface()
    if is_offline():
        raise HubOfflineError(f"{ref}: cannot push with HF_HUB_OFFLINE=1 (unset it to upload)")
    if hf.get_token() is None:
        raise HubAccessError(f"{ref}: pushing needs a Hugging Face token with write access: set HF_TOKEN or run "
                             "`hf auth login`")
    return hf.HfApi(endpoint=endpoint())


def _prepare(api: Any, ref: HubRef, private: bool) -> None:
    from wsl.hub.uri import hub_error

    try:
        api.create_repo(ref.repo_id, repo_type=ref.repo_type, private=private, exist_ok=True)
        if ref.revision not in (None, "main") and not is_commit(ref.revision):
            api.create_branch(ref.repo_id, repo_type=ref.repo_type, branch=ref.revision, exist_ok=True)
    except Exception as exc:
        raise hub_error(exc, ref) from exc


def _commit(api: Any, ref: HubRef, batches: Sequence[Sequence[tuple[str, Any]]], message: str,
            report: PushReport) -> PushReport:
    """One ``create_commit`` per batch of ``(path in repo, local path or bytes)``."""
    from wsl.hub.uri import huggingface, hub_error

    hf = huggingface()
    batches = [b for b in batches if b]
    for i, batch in enumerate(batches):
        ops = [hf.CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(src) if isinstance(src, Path) else src)
               for p, src in batch]
        msg = message if len(batches) == 1 else f"{message} ({i + 1}/{len(batches)})"
        try:
            info = api.create_commit(ref.repo_id, operations=ops, commit_message=msg, repo_type=ref.repo_type,
                                     revision=ref.revision)
        except Exception as exc:
            raise hub_error(exc, ref) from exc
        report.commits.append(str(getattr(info, "commit_url", "") or info))
        report.files += len(batch)
    return report


def _in_repo(ref: HubRef, name: str) -> str:
    return f"{ref.path}/{name}" if ref.path else name


def _training_zoo_card(config: dict[str, Any], directory: Path) -> dict[str, Any] | None:
    """The training zoo's ``zoo.json`` if the predictor names a local zoo that still exists."""
    zoo = (config.get("training") or {}).get("zoo")
    if not isinstance(zoo, str) or is_hub_uri(zoo):
        return None
    for base in (Path(zoo), directory / zoo):
        try:
            card = json.loads((base / "zoo.json").read_text(encoding="utf-8"))
            return card if isinstance(card, dict) else None
        except (OSError, ValueError):
            continue
    return None


def push_predictor(directory: str | os.PathLike[str], uri: str, *, private: bool = False,
                   revision: str | None = None, commit_message: str | None = None,
                   license: str | None = None) -> PushReport:
    """Upload a predictor directory to the model repository ``uri`` with a generated model card."""
    from wsl.hub.cards import DEFAULT_LICENSE, predictor_card
    from wsl.train.predictor import load_predictor

    d = Path(directory)
    if is_hub_uri(str(directory)) or not d.is_dir():
        raise WslError(f"{directory}: not a local predictor directory")
    ref = parse_target(uri, "model", revision)
    predictor = load_predictor(d)  # validates config.json and the weights before anything is sent
    config = predictor.config
    card = predictor_card(config, ref.repo_id, license=license or DEFAULT_LICENSE,
                          zoo_card=_training_zoo_card(config, d))
    files: list[tuple[str, Any]] = [(_in_repo(ref, n), d / n) for n in ("config.json", "model.safetensors",
                                                                         "space.json") if (d / n).is_file()]
    files.append((_in_repo(ref, "README.md"), card.encode()))
    api = _hf_api(ref)
    _prepare(api, ref, private)
    message = commit_message or f"Upload wsl predictor {config['model']['name']} ({config['target']['name']})"
    return _commit(api, ref, [files], message, PushReport(ref.uri))


HYPER_FILES = ("hyper.safetensors", "base.safetensors", "config.json", "metrics.json", "loss.png", "accuracy.png")
"""Files of a NeuMeta run directory that are pushed (the ``checkpoint/`` folder is not)."""


def push_hyper(directory: str | os.PathLike[str], uri: str, *, private: bool = False,
               revision: str | None = None, commit_message: str | None = None,
               license: str | None = None) -> PushReport:
    """Upload a NeuMeta run directory (``wsl hyper train``) to the model repository ``uri`` with a model card."""
    from wsl.hub.cards import DEFAULT_LICENSE, hyper_card
    from wsl.hyper.run import load_hyper

    d = Path(directory)
    if is_hub_uri(str(directory)) or not d.is_dir():
        raise WslError(f"{directory}: not a local NeuMeta run directory")
    for need in ("hyper.safetensors", "config.json", "metrics.json"):
        if not (d / need).is_file():
            raise WslError(f"{d}: no {need}; push a finished run directory of `wsl hyper train`")
    hyper = load_hyper(d)  # validates the weights and their config before anything is sent
    try:
        config = json.loads((d / "config.json").read_text(encoding="utf-8"))
        metrics = json.loads((d / "metrics.json").read_text(encoding="utf-8"))
    except ValueError as exc:
        raise WslError(f"{d}: config.json or metrics.json is not valid JSON ({exc})") from None
    ref = parse_target(uri, "model", revision)
    card = hyper_card(config, metrics, hyper.config_dict(), ref.repo_id, license=license or DEFAULT_LICENSE)
    files: list[tuple[str, Any]] = [(_in_repo(ref, n), d / n) for n in HYPER_FILES if (d / n).is_file()]
    files.append((_in_repo(ref, "README.md"), card.encode()))
    api = _hf_api(ref)
    _prepare(api, ref, private)
    message = commit_message or f"Upload wsl NeuMeta hypernetwork ({hyper.family.name} on {config.get('dataset')})"
    return _commit(api, ref, [files], message, PushReport(ref.uri))


def _check_not_being_written(root: Path) -> None:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        return
    fd = os.open(root, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        raise ZooFormatError(f"{root}: another process is writing this zoo; push it when it is done") from None
    finally:
        os.close(fd)


def push_zoo(directory: str | os.PathLike[str], uri: str, *, private: bool = False, revision: str | None = None,
             commit_message: str | None = None, license: str | None = None,
             files_per_commit: int = MAX_FILES_PER_COMMIT, verify: bool = True) -> PushReport:
    """Upload a native zoo to the dataset repository ``uri`` (several commits if large) with a dataset card.

    ``verify`` checksums every shard first (a corrupt zoo is not uploaded).
    """
    from wsl.hub.cards import zoo_card
    from wsl.zoo import load_zoo
    from wsl.zoo.format import FORMAT as ZOO_FORMAT
    from wsl.zoo.store import read_metadata_lines

    if is_hub_uri(str(directory)):
        raise WslError(f"{directory}: push a local zoo directory (download it first)")
    if not isinstance(files_per_commit, int) or files_per_commit < 1:
        raise WslError(f"files_per_commit must be a positive integer, got {files_per_commit!r}")
    ref = parse_target(uri, "dataset", revision)
    root = Path(directory)
    zoo = load_zoo(root, verify="eager" if verify else "none")
    _check_not_being_written(root)
    card = zoo.card
    if card["format"] != ZOO_FORMAT:
        raise ZooFormatError(f"{root}: is a {card['format']!r} zoo; only native zoos are pushed (decompress "
                             f"it first: wsl zoo merge OUT {root})")
    shards = [(_in_repo(ref, s["file"]), root / s["file"]) for s in card["shards"]]
    missing = [str(p) for _, p in shards if not p.is_file()]
    if missing:
        raise ZooFormatError(f"{root}: shard {missing[0]} listed in zoo.json is missing")
    metadata = b"".join(read_metadata_lines(root, card))  # exactly the committed rows
    last = [(_in_repo(ref, "metadata.jsonl"), metadata), (_in_repo(ref, "zoo.json"), root / "zoo.json"),
            (_in_repo(ref, "README.md"), zoo_card(zoo, ref.repo_id, license=license, folder=ref.path).encode())]
    batches = [shards[i:i + files_per_commit] for i in range(0, len(shards), files_per_commit)] + [last]
    api = _hf_api(ref)
    _prepare(api, ref, private)
    message = commit_message or f"Upload wsl zoo {card['name']} ({card['num_rows']:,} rows)"
    return _commit(api, ref, batches, message, PushReport(ref.uri))


class HubPredictor:
    """A predictor with Hub I/O (``PyTorchModelHubMixin``-style); other attributes go to the predictor."""

    def __init__(self, predictor: Any) -> None:
        self.predictor = predictor

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike[str], *, revision: str | None = None,
                        device: Any = None) -> "HubPredictor":
        """Load from a predictor directory or an ``hf://ORG/NAME[@REV][/PATH]`` model repository."""
        from wsl.hub.resolve import resolve
        from wsl.train.predictor import load_predictor

        src = str(source)
        if is_hub_uri(src):
            ref = parse_uri(src)
            src = str(resolve((ref.with_(revision=revision) if revision else ref).uri, repo_type="model"))
        return cls(load_predictor(src, device=device))

    def save_pretrained(self, directory: str | os.PathLike[str], *, repo_id: str | None = None,
                        license: str | None = None) -> Path:
        """Write the predictor directory with a model card (``repo_id`` names it in the card)."""
        from wsl.hub.cards import DEFAULT_LICENSE, predictor_card
        from wsl.train.predictor import save_predictor

        p = self.predictor
        card = predictor_card(p.config, repo_id, license=license or DEFAULT_LICENSE)
        return save_predictor(directory, model=p.model, config=p.config, space=p.space, readme=card)

    def push_to_hub(self, uri: str, *, private: bool = False, revision: str | None = None,
                    commit_message: str | None = None, license: str | None = None) -> PushReport:
        """Save to a temporary directory and :func:`push_predictor` it to ``uri``."""
        with tempfile.TemporaryDirectory(prefix="wsl-push-") as tmp:
            self.save_pretrained(tmp, repo_id=parse_target(uri, "model", revision).repo_id, license=license)
            return push_predictor(tmp, uri, private=private, revision=revision, commit_message=commit_message,
                                  license=license)

    def __getattr__(self, name: str) -> Any:
        if name == "predictor":
            raise AttributeError(name)
        return getattr(self.predictor, name)

    def __repr__(self) -> str:
        return f"HubPredictor({self.predictor!r})"


def add_push_args(p: Any, what: str, license_default: str = "apache-2.0") -> None:
    """Options shared by ``wsl push`` and ``wsl zoo push``."""
    p.add_argument("--private", action="store_true", help="create the repository as private (if it does not exist)")
    p.add_argument("--revision", metavar="BRANCH", help="branch to push to (created from main if missing)")
    p.add_argument("--message", metavar="TEXT", help="commit message")
    p.add_argument("--license", metavar="ID", help=f"license id written in the {what} card (default "
                   f"{license_default})")


def register_push(zsub: Any) -> None:
    """Add ``push`` to the ``wsl zoo`` subcommands."""
    p = zsub.add_parser("push", help="upload a zoo to a Hugging Face dataset repository",
                        description="Upload a native zoo (zoo.json, metadata.jsonl, shards) unchanged, with a "
                        "generated dataset card, in commits of at most --files-per-commit files.")
    p.add_argument("path", help="zoo directory")
    p.add_argument("repo", metavar="hf://datasets/ORG/NAME", help="destination dataset repository")
    add_push_args(p, "dataset", "the zoo card's extra.license or dataset.license, else apache-2.0")
    p.add_argument("--files-per-commit", type=int, default=MAX_FILES_PER_COMMIT, metavar="N",
                   help=f"shards per commit (default {MAX_FILES_PER_COMMIT})")
    p.add_argument("--no-verify", action="store_true", help="skip checksumming the shards before uploading")
    p.set_defaults(func=_run_zoo_push)


def _run_zoo_push(args: Any) -> int:
    report = push_zoo(args.path, args.repo, private=args.private, revision=args.revision,
                      commit_message=args.message, license=args.license, files_per_commit=args.files_per_commit,
                      verify=not args.no_verify)
    print(f"pushed {args.path} to {report.uri}: {report.files:,} files in {len(report.commits)} commits "
          f"({report.commit_url})")
    return 0
