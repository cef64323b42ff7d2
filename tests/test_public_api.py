"""The public entry points survive the package layout: importable from the package (cheaply:
no torch until one is used) and from their old module paths (issue #18)."""

import subprocess
import sys


def test_public_names_are_the_modules_own():
    import auralsam2_core
    from auralsam2_core import ModelSpec, PrelabelOptions, build_auralsam2, prelabel
    from auralsam2_core.inference.engine import PrelabelOptions as options_home
    from auralsam2_core.inference.engine import prelabel as prelabel_home
    from auralsam2_core.model_spec import ModelSpec as spec_home
    from auralsam2_core.modeling.build import build_auralsam2 as build_home

    assert (build_auralsam2, prelabel, PrelabelOptions, ModelSpec) == \
        (build_home, prelabel_home, options_home, spec_home)
    assert set(auralsam2_core.__all__) >= {"build_auralsam2", "prelabel", "ModelSpec"}


def test_old_module_paths_still_import():
    from auralsam2_core.build import build_auralsam2, build_demo_model
    from auralsam2_core.engine import PrelabelOptions, prelabel
    from auralsam2_core.inference import engine
    from auralsam2_core.modeling import build

    assert (build_auralsam2, build_demo_model) == (build.build_auralsam2, build.build_demo_model)
    assert (prelabel, PrelabelOptions) == (engine.prelabel, engine.PrelabelOptions)


def test_importing_the_package_is_cheap_and_unknown_names_fail():
    code = ("import sys, auralsam2_core\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n"
            "try:\n    auralsam2_core.nope\nexcept AttributeError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert "has no attribute 'nope'" in out.stdout
