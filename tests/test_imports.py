"""synret.imports: deferred packages run on first use, never at import; hidden ones look uninstalled."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def run(tmp_path, code: str) -> str:
    pkg = tmp_path / "heavy"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("import os\nopen(os.environ['RUNS'], 'a').write('x')\nfrom .part import VALUE\n")
    (pkg / "part.py").write_text("VALUE = 42\n")
    env = {"RUNS": str(tmp_path / "runs"), "PYTHONPATH": f"{tmp_path}"}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_deferred_package_runs_once_on_first_use(tmp_path):
    out = run(tmp_path, """
        import os, sys
        sys.path.insert(0, os.environ["PYTHONPATH"])
        from synret.imports import defer, is_deferred
        defer("heavy")
        import heavy
        import heavy as again          # a second import statement is not a use
        assert again is heavy and is_deferred(heavy)
        assert not os.path.exists(os.environ["RUNS"])
        value = heavy.VALUE            # the first use runs it, once
        assert value == 42 and not is_deferred(sys.modules["heavy"]) and heavy.part.VALUE == 42
        import heavy.part
        print(open(os.environ["RUNS"]).read())
    """)
    assert out == "x"


def test_a_missing_name_of_a_deferred_package_is_an_attribute_error(tmp_path):
    out = run(tmp_path, """
        from synret.imports import defer
        defer("heavy")
        import heavy
        try:
            heavy.nothing_here
        except AttributeError as e:
            print("AttributeError", e)
    """)
    assert out.startswith("AttributeError")


def test_a_hidden_package_looks_uninstalled(tmp_path):
    out = run(tmp_path, """
        from synret.imports import hide
        hide("heavy")
        try:
            import heavy
        except ModuleNotFoundError:
            print("missing")
    """)
    assert out == "missing"
