"""The client-only commands: ``hec import-concrete / keygen / encrypt / eval / decrypt`` (compile: :mod:`.compile`)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from ..errors import HECError
from ._util import echo as _echo
from ._util import size as _size


@click.command("import-concrete")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Bundle to write.")
def import_concrete_cmd(directory: Path, output: Path) -> None:
    """Bundle a Concrete ML deployment directory (client.zip + server.zip from FHEModelDev.save()).

    Example: hec import-concrete deployment/ -o model.hec
    """
    import he_compute

    bundle = he_compute.import_concrete(directory)
    bundle.save(output)
    _echo(f"wrote {output} ({bundle.manifest['model_type']}, model {bundle.model_id[:12]})")


@click.command("keygen")
@click.argument("bundle", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--keys", "keys_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Key directory to create (mode 0700).")
@click.option("--force", is_flag=True,
              help="Replace keys already in the directory; the old ones are kept in DIR/retired/ as --rotate "
                   "does, unless --discard-old.")
@click.option("--discard-old", is_flag=True,
              help="With --force: delete the old keys for good (results made with them can never be decrypted).")
@click.option("--rotate", is_flag=True,
              help="Keep the keys already in DIR under DIR/retired/<key id>/ and make new ones (after a failed "
                   "check: see the README's 'Verifying workers').")
def keygen_cmd(bundle: Path, keys_dir: Path, force: bool, discard_old: bool, rotate: bool) -> None:
    """Generate secret keys into DIR and export the shareable evaluation keys.

    DIR also keeps the bundle's server part and is recorded by key id in ~/.hec/keydirs.json,
    so hec encrypt, run and decrypt find it without --keys or --bundle on this machine.

    Example: hec keygen model.hec --keys keys/
    """
    from ..client.client import Client, load_bundle
    from ..client.keys import refuse_existing
    from ..client.progress import working

    from ..client.keys import KEYINFO

    if discard_old and not force:
        raise HECError("--discard-old goes with --force: it deletes the keys already in the directory")
    refuse_existing(keys_dir, force=force or rotate)  # before the slow part, and before saying it has started
    b = load_bundle(bundle)
    # --force keeps the old keys as --rotate does: deleting a secret key loses every result made with it.
    if (rotate or (force and not discard_old)) and (keys_dir / KEYINFO).exists():
        from ..client.keys import retire

        from ..client import registry
        from ..client.keys import read_info

        retired = retire(keys_dir)
        registry.remember(retired, read_info(retired))  # old results still decrypt without --keys
        _echo(f"retired the old keys to {retired}" + ("" if rotate else " (--discard-old deletes them instead)"))
    start = time.perf_counter()
    with working(f"generating {b.scheme} keys for model {b.model_id[:12]}"):
        client = Client.keygen(b, keys_dir, force=force)
    size = client.evaluation_keys_path.stat().st_size
    _echo(f"secret keys in {keys_dir} (0700); evaluation keys {client.evaluation_keys_path} "
          f"({_size(size)}, key id {client.key_id[:12]}) in {time.perf_counter() - start:.1f}s; "
          f"hec encrypt, run and decrypt find them from now on")


@click.command("encrypt")
@click.argument("bundle", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("input_path", metavar="INPUT", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--keys", "keys_dir", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Key directory (default: the newest one hec keygen made for BUNDLE on this machine).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path))
def encrypt_cmd(bundle: Path, input_path: Path, keys_dir: Path | None, output: Path) -> None:
    """Encrypt INPUT (.npy or .csv, rows = samples) for BUNDLE with the keys in DIR.

    Example: hec encrypt model.hec X.csv -o x.enc
    """
    from ..client import registry
    from ..client.client import Client, load_bundle
    from ..client.data import read_input, validate_input
    from ..client.progress import progress

    b = load_bundle(bundle)
    # The input is checked against the bundle before the keys (and the scheme library) are loaded.
    X = validate_input(read_input(input_path), b.manifest["input_shape"], str(input_path))
    if keys_dir is None:
        found = registry.find_for_model(b.model_id)
        if not found:
            raise HECError(f"no keys for model {b.model_id[:12]} on this machine: run hec keygen {bundle} "
                           f"--keys DIR, or pass --keys DIR")
        keys_dir = found[0]
        # Always said: after a key directory moves, the registry may hold another copy for the same model.
        among = f"the newest of {len(found)} for this model" if len(found) > 1 else "found by model id"
        _echo(f"using keys in {Path(keys_dir).resolve()} ({among}; --keys picks another)")
    client = Client(keys_dir)
    client.check_bundle(b)
    with progress("encrypt", len(X)) as advance:
        enc = client.encrypt(X, source=str(input_path), progress=advance)
    enc.save(output)
    _echo(f"wrote {output}: {enc.meta['n_samples']} samples in {len(enc.sections)} chunk(s), "
          f"{_size(output.stat().st_size)}")


@click.command("eval")
@click.argument("encrypted", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--bundle", "server", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Bundle or server part; only its server part is used.")
@click.option("--eval-keys", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Evaluation-key file (never the key directory).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path))
def eval_cmd(encrypted: Path, server: Path, eval_keys: Path, output: Path) -> None:
    """Evaluate encrypted inputs exactly as a worker does: server part + evaluation keys only.

    Example: hec eval x.enc --bundle model.hec --eval-keys keys/evaluation.keys -o y.enc
    """
    from ..client.progress import progress
    from ..evaluator import Evaluator
    from ..formats import container
    from ..formats.evalkeys import read as read_evaluation_keys

    enc = container.read(encrypted, expect="ciphertexts")
    evaluator = Evaluator.from_file(server)
    keys = evaluator.load_keys(read_evaluation_keys(eval_keys))
    start = time.perf_counter()
    with progress("evaluate", enc.meta["n_samples"]) as advance:
        result = evaluator.evaluate(enc, keys, progress=advance)
    result.save(output)
    elapsed = time.perf_counter() - start
    _echo(f"wrote {output}: {enc.meta['n_samples']} samples in {elapsed:.1f}s "
          f"({elapsed / max(1, enc.meta['n_samples']):.2f}s/sample)")


@click.command("decrypt")
@click.argument("result", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--keys", "keys_dir", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Key directory (default: the one on this machine that holds RESULT's key id).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Output file, .npy or .csv (samples × outputs), written 0600.")
def decrypt_cmd(result: Path, keys_dir: Path | None, output: Path) -> None:
    """Decrypt an encrypted RESULT with the keys that encrypted its inputs.

    Example: hec decrypt y.enc -o y.csv
    """
    from ..client import registry
    from ..client.client import Client
    from ..client.data import SUFFIXES, write_output
    from ..client.progress import progress
    from ..formats import container

    if output.suffix.lower() not in SUFFIXES:
        raise HECError(f"{output}: unsupported output type; use .npy or .csv")
    res = container.read(result, expect="results")
    client = Client(registry.keys_for(str(res.meta.get("key_id")), keys_dir, str(result)))
    with progress("decrypt", int(res.meta.get("n_samples", 0))) as advance:
        values = client.decrypt(res, progress=advance)
    write_output(output, values)
    _echo(f"wrote {output}: {values.shape[0]} samples × {values.shape[1]} outputs")
