"""timm's own model tests (tests/test_models.py of the installed timm's source release) over
mLiT's models, as a timm user would run them: nothing of the file changed, mlit imported
before collection, `-k mlit`.

    python tools/timm_model_tests.py                      # fetches timm's sdist with pip
    python tools/timm_model_tests.py --sdist timm-1.0.31.tar.gz [-- PYTEST_ARGS ...]

mLiT is a ViT (forward_features gives tokens, the pooled feature is a token), so for the
configuration test its names join the filter timm's file applies to its own ViTs (`vit_*` in
NON_STD_FILTERS): test_model_default_cfgs_non_std runs for it instead of the test for
convolutional feature maps. Every other test runs as timm's file has it. Prints pytest's
summary; exit status pytest's, or 2 with one line when timm or its tests cannot be had.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

CONFTEST = '''\
import timm

import mlit  # noqa: F401  (registers mLiT's models in timm)

VIT_FAMILY = ["mlit_*", "mmlit_*"]  # counted where timm's file names its ViTs ("vit_*")
_list_models = timm.list_models


def list_models(*args, **kwargs):
    exclude = kwargs.get("exclude_filters")  # the configuration test's list (include_tags)
    if isinstance(exclude, (list, tuple)) and "vit_*" in exclude and kwargs.get("include_tags"):
        kwargs["exclude_filters"] = [*exclude, *VIT_FAMILY]
    include = kwargs.get("filter", args[0] if args else "")
    if isinstance(include, (list, tuple)) and "vit_*" in include:
        kwargs["filter"], args = [*include, *VIT_FAMILY], args[1:]
    return _list_models(*args, **kwargs)


timm.list_models = list_models
'''


def fail(message: str) -> int:
    print(f"timm_model_tests: {message}", file=sys.stderr)
    return 2


def fetch_sdist(version: str, folder: Path) -> Path | None:
    """timm's source release of `version`, downloaded by pip (its tests ship in it)."""
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary",
                           ":all:", "-q", "-d", str(folder), f"timm=={version}"],
                          capture_output=True, text=True)
    found = sorted(folder.glob("timm-*.tar.gz"))
    return found[0] if done.returncode == 0 and found else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sdist", type=Path,
                        help="timm's source release (.tar.gz); default: fetched with pip")
    parser.add_argument("pytest_args", nargs="*", help="more pytest arguments (after --)")
    args = parser.parse_args(argv)
    try:
        import timm
    except ImportError:
        return fail("timm is not installed: pip install -e '.[timm]'")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sdist = args.sdist or fetch_sdist(timm.__version__, work)
        if sdist is None:
            return fail(f"could not download timm {timm.__version__}'s source release "
                        "(no network?); pass one with --sdist")
        try:
            with tarfile.open(sdist) as archive:
                member = next((m for m in archive.getmembers()
                               if m.name.endswith("/tests/test_models.py")), None)
                if member is None:
                    return fail(f"{sdist} has no tests/test_models.py")
                (work / "test_models.py").write_bytes(archive.extractfile(member).read())
        except (OSError, tarfile.TarError) as err:
            return fail(f"{sdist} cannot be read as timm's source release ({err})")
        (work / "conftest.py").write_text(CONFTEST)
        print(f"timm {timm.__version__}'s tests/test_models.py from {sdist.name}, -k mlit",
              flush=True)
        return subprocess.run([sys.executable, "-m", "pytest", "test_models.py", "-k", "mlit",
                               "-p", "no:cacheprovider", "-q", "-W", "ignore",
                               "-o", "addopts=", *args.pytest_args], cwd=work).returncode


if __name__ == "__main__":
    sys.exit(main())
