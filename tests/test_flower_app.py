"""The Flower app finfed submits: a manifest only, naming the installed ServerApp and ClientApp."""

import io
import tomllib
import zipfile

from flwr.cli.build import build_fab_from_disk
from flwr.supercore.object_ref import validate

from finfed.config import ExperimentConfig, to_run_config
from finfed.runtime.flower_app import CLIENT_APP, SERVER_APP, write_app


def test_the_app_bundle_carries_the_manifest_and_no_code(tmp_path):
    app = write_app(tmp_path)
    fab = build_fab_from_disk(app)
    names = zipfile.ZipFile(io.BytesIO(fab)).namelist()
    assert not [name for name in names if name.endswith(".py")], names
    manifest = tomllib.loads(zipfile.ZipFile(io.BytesIO(fab)).read("pyproject.toml").decode())
    assert manifest["tool"]["flwr"]["app"]["config"] == to_run_config(ExperimentConfig())


def test_components_resolve_to_installed_modules_from_any_folder(tmp_path):
    for component in (SERVER_APP, CLIENT_APP):
        assert validate(component, check_module=True, project_dir=tmp_path) == (True, None)


def test_the_run_config_file_reads_back_through_flowers_parser_unchanged(tmp_path):
    from flwr.common.config import parse_config_args

    from finfed.config import from_run_config, load_config
    from finfed.runtime.local_engine import write_run_config

    config = load_config(None, ['data.path=it\'s "quoted" \\ here', "lora.target_modules=query,key,value",
                                "privacy.target_delta=0.000001"])
    write_run_config(to_run_config(config), tmp_path / "run-config.toml")
    parsed = parse_config_args([str(tmp_path / "run-config.toml")])
    assert parsed == to_run_config(config)
    assert from_run_config(parsed) == config
