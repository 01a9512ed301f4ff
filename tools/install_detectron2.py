"""Make detectron2 importable in the running interpreter's environment.

Order of preference (see README "Install"):
1. ``DETECTRON2_SRC=/path`` names a local source checkout: it is built (with its C++ ops) and
   installed, unless the importable detectron2 already comes from that checkout.
2. An importable detectron2 that has the features efficientps uses is kept as it is.
3. Otherwise the registry snapshot ``pb1-detectron2==0.6`` (detectron2 v0.6's Python code, no C++
   sources) is downloaded, patched with the small fixes upstream detectron2 made later for
   current NumPy, Pillow and setuptools, given a placeholder ``detectron2._C`` that raises a clear
   error when a compiled-only op is called, and installed.

Run it with the target environment's python: ``.venv/bin/python tools/install_detectron2.py``.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SNAPSHOT_REQUIREMENT = "pb1-detectron2==0.6"
PLACEHOLDER_FILE = Path(__file__).with_name("detectron2_C_placeholder.py")

# detectron2 APIs efficientps relies on; their presence is what "detectron2 >= v0.6" means here,
# because v0.6 and today's main both report __version__ "0.6".
REQUIRED_FEATURES = (
    "from detectron2.config import configurable, LazyConfig",
    "from detectron2.data.transforms import AugInput",
    "from detectron2.utils.events import EventStorage",
    "from detectron2.modeling import META_ARCH_REGISTRY, SEM_SEG_HEADS_REGISTRY",
)

# Aliases NumPy 1.24 removed; upstream detectron2 replaced each with the builtin.
NUMPY_ALIASES = re.compile(r"\bnp\.(bool|int|float|str|object|long)\b(?!_)")


def log(message):
    print(f"[install_detectron2] {message}", flush=True)


def run(cmd, **kwargs):
    log("$ " + " ".join(str(c) for c in cmd))
    subprocess.run([str(c) for c in cmd], check=True, **kwargs)


def importable_detectron2():
    """Return (path, missing_features) of the importable detectron2, or (None, None)."""
    probe = (
        "import detectron2, os, sys\n"
        "print(os.path.dirname(os.path.realpath(detectron2.__file__)))\n"
        f"for stmt in {REQUIRED_FEATURES!r}:\n"
        "    try:\n"
        "        exec(stmt)\n"
        "    except Exception as e:\n"
        "        print('MISSING', stmt, '->', repr(e))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=tempfile.gettempdir()
    )
    if result.returncode != 0:
        return None, None
    lines = result.stdout.strip().splitlines()
    return lines[0], [line for line in lines[1:] if line.startswith("MISSING")]


def install_from_source(src):
    src = Path(src).expanduser().resolve()
    if not (src / "setup.py").is_file() or not (src / "detectron2").is_dir():
        sys.exit(
            f"DETECTRON2_SRC={src} is not a detectron2 source checkout: expected setup.py and a "
            "detectron2/ folder in it."
        )
    # --no-build-isolation: detectron2's setup.py imports torch, which must be the one installed.
    run([sys.executable, "-m", "pip", "install", "--no-build-isolation", str(src)])


def ensure_pkg_resources():
    """detectron2's model_zoo imports pkg_resources, which setuptools >= 81 no longer ships.

    The registry snapshot is patched instead; a source checkout is the user's code, left as it
    is, so the environment gets a setuptools that still has pkg_resources.
    """
    probe = subprocess.run([sys.executable, "-c", "import pkg_resources"], capture_output=True)
    if probe.returncode != 0:
        log("detectron2's model_zoo needs pkg_resources (setuptools < 81): installing it")
        run([sys.executable, "-m", "pip", "install", "setuptools<81"])


def replace_once(path, old, new):
    text = path.read_text()
    if old not in text:
        sys.exit(f"snapshot patch failed: {path} no longer contains {old!r}; update this script.")
    path.write_text(text.replace(old, new))


def patch_snapshot(tree):
    """Apply the upstream fixes the v0.6 snapshot lacks; each patch fails loudly if it misses."""
    package = tree / "detectron2"

    # No C++ sources in the snapshot: build no extension. black==21.4b2 is a dev tool pinned in
    # install_requires that breaks current black/click installs; upstream dropped it later.
    setup_py = tree / "setup.py"
    replace_once(setup_py, "ext_modules=get_extensions(),", "ext_modules=[],")
    replace_once(setup_py, '"black==21.4b2",', "")

    shutil.copyfile(PLACEHOLDER_FILE, package / "_C.py")

    # Pillow 10 removed Image.LINEAR (an alias of BILINEAR).
    replace_once(
        package / "data/transforms/transform.py", "interp=Image.LINEAR", "interp=Image.BILINEAR"
    )

    # setuptools >= 81 no longer ships pkg_resources; resolve packaged configs without it.
    model_zoo = package / "model_zoo/model_zoo.py"
    replace_once(model_zoo, "import pkg_resources\n", "import importlib\n")
    replace_once(
        model_zoo,
        "pkg_resources.resource_filename(",
        "(lambda pkg, res: os.path.join("
        "os.path.dirname(importlib.import_module(pkg).__file__), res))(",
    )

    patched = 0
    for py_file in package.rglob("*.py"):
        text = py_file.read_text()
        new_text = NUMPY_ALIASES.sub(lambda m: m.group(1).replace("long", "int"), text)
        if new_text != text:
            py_file.write_text(new_text)
            patched += 1
    if patched == 0:
        sys.exit("snapshot patch failed: no NumPy alias found; update this script.")
    log(f"patched NumPy aliases in {patched} files, Image.LINEAR, pkg_resources, setup.py")


def install_snapshot():
    with tempfile.TemporaryDirectory(prefix="efficientps-d2-") as tmp:
        tmp = Path(tmp)
        # --no-build-isolation: the sdist's setup.py imports torch even to report its metadata.
        run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation"]
            + ["--no-binary", ":all:", "-d", tmp, SNAPSHOT_REQUIREMENT]
        )
        archives = list(tmp.glob("*.tar.gz"))
        if len(archives) != 1:
            sys.exit(f"expected one sdist of {SNAPSHOT_REQUIREMENT} in {tmp}, found {archives}")
        with tarfile.open(archives[0]) as tar:
            # The "data" filter refuses links and absolute paths (Python >= 3.11.4 has it).
            extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(tmp, **extra)
        tree = next(p for p in tmp.iterdir() if p.is_dir() and (p / "setup.py").is_file())
        patch_snapshot(tree)
        run([sys.executable, "-m", "pip", "install", "--no-build-isolation", tree])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--src", default=os.environ.get("DETECTRON2_SRC", ""), help="detectron2 source checkout"
    )
    args = parser.parse_args()

    installed_at, missing = importable_detectron2()
    if args.src:
        src_package = str(Path(args.src).expanduser().resolve() / "detectron2")
        if installed_at == src_package:
            log(f"detectron2 from DETECTRON2_SRC is already installed ({installed_at}); kept")
        else:
            install_from_source(args.src)
        ensure_pkg_resources()
    elif installed_at is not None and not missing:
        log(f"detectron2 already importable from {installed_at}; kept")
        return
    elif installed_at is not None:
        sys.exit(
            f"detectron2 at {installed_at} lacks features efficientps needs:\n  "
            + "\n  ".join(missing)
            + "\nUpgrade it (>= v0.6), or point DETECTRON2_SRC at a newer checkout."
        )
    else:
        install_snapshot()

    installed_at, missing = importable_detectron2()
    if installed_at is None or missing:
        sys.exit(f"detectron2 still does not import with the needed features: {missing}")
    log(f"detectron2 ready at {installed_at}")


if __name__ == "__main__":
    main()
