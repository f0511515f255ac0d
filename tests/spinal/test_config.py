"""Configs are typed by their annotations, once: TOML tables, `--set K=V` and the CLI read the same fields."""

from __future__ import annotations

import dataclasses

import pytest
from typer.main import get_command

from spinal.cli.app import app
from spinal.config import AnalyzeConfig, CaptureConfig, Checkpoint, CompareConfig, RunConfig, load_run_config
from spinal.errors import InputError
from spinal.fields import accepts, default_of, from_dict, parse_text, settings


def test_types_come_from_annotations_not_substrings():
    # the old check passed any int for tuple[Checkpoint, ...] because "int" is a substring of "Checkpoint"
    assert not accepts(tuple[Checkpoint, ...], 3)
    assert accepts(tuple[Checkpoint, ...], [{"label": "a", "path": "p"}])
    assert not accepts(int, True) and not accepts(float, False)
    assert accepts(float, 2) and not accepts(int, 2.0)
    assert accepts(str | None, None) and not accepts(str, None)
    assert not accepts(str | None, 1)


def test_from_dict_names_the_key_the_type_and_builds_nested_configs():
    with pytest.raises(InputError, match=r"t: key 'replicas' = '2' has the wrong type; expected int"):
        from_dict(dataclasses.make_dataclass("C", [("replicas", int, dataclasses.field(default=1))]), {"replicas": "2"},
                  "t")
    Pair = dataclasses.make_dataclass("Pair", [("cks", tuple[Checkpoint, ...])], frozen=True)
    built = from_dict(Pair, {"cks": [{"label": "a", "path": "x"}, {"label": "b", "path": "y"}]})
    assert built.cks == (Checkpoint("a", "x"), Checkpoint("b", "y"))
    with pytest.raises(InputError, match=r"cks #2: unknown key\(s\) \['lable'\]"):
        from_dict(Pair, {"cks": [{"label": "a", "path": "x"}, {"lable": "b", "path": "y"}]})
    with pytest.raises(InputError, match=r"missing key\(s\) \['out', 'store'\]"):
        from_dict(AnalyzeConfig, {})


def test_set_values_are_parsed_by_the_field_type():
    assert parse_text("0.35", float, "mfu") == 0.35
    assert parse_text("12", int, "n") == 12 and parse_text("none", int | None, "n") is None
    assert parse_text("false", bool, "b") is False and parse_text("yes", bool, "b") is True
    with pytest.raises(InputError, match="expected true or false"):
        parse_text("maybe", bool, "b")
    with pytest.raises(InputError, match="expected a number"):
        parse_text("abc", float, "mfu")
    assert settings(CompareConfig, ["n_boot=7", "weights=false"], "--set") == {"n_boot": 7, "weights": False}
    with pytest.raises(InputError, match="--set nboot: unknown key"):
        settings(CompareConfig, ["nboot=7"], "--set")


def _cli_params(verb: str) -> dict:
    cmd = get_command(app).commands[verb]
    return {p.name: p for p in cmd.params}


@pytest.mark.parametrize("verb, cls", [("capture", CaptureConfig), ("analyze", AnalyzeConfig),
                                       ("compare", CompareConfig)])
def test_every_cli_field_is_an_option_with_the_config_default_and_help(verb, cls):
    params = _cli_params(verb)
    for f in dataclasses.fields(cls):
        if not f.metadata.get("cli", True):  # TOML-only (compare's own --weights takes folders, not this bool)
            assert f.name not in params or params[f.name].help != f.metadata["help"]
            continue
        p = params[f.name]
        default = default_of(f)
        if default is not dataclasses.MISSING and f.name != "model":
            assert p.default == default, f.name
        if p.param_type_name == "option":
            assert p.help == f.metadata["help"], f.name
            # the flag a user types is the TOML key, hyphenated (--cross-readout-tokens = cross_readout_tokens)
            assert p.opts[0] == "--" + f.name.replace("_", "-"), (f.name, p.opts)


def test_cli_values_reach_the_config(tmp_path):
    from typer.testing import CliRunner

    r = CliRunner().invoke(app, ["analyze", str(tmp_path / "none.zarr"), "-o", str(tmp_path / "t"), "--blocks", "0"])
    assert r.exit_code == 2 and "blocks=0; must be ≥ 1" in r.output  # the CLI value, checked by the config
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()  # folders, so the inputs' kind passes and the value is read
    r = CliRunner().invoke(app, ["compare", str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(tmp_path / "c"),
                                 "--n-boot", "0"])
    assert r.exit_code == 2 and "n_boot=0: the ΔL bootstrap needs ≥ 1 resample" in r.output


def _toml(tmp_path, body: str) -> str:
    (tmp_path / "p.jsonl").write_text('{"id": "a", "prompt": "hi"}\n')
    f = tmp_path / "run.toml"
    f.write_text('[run]\nout = "o"\nprompts = "p.jsonl"\n[[checkpoints]]\nlabel = "a"\npath = "m"\n' + body)
    return str(f)


def test_run_config_holds_typed_stage_configs_built_once(tmp_path):
    cfg = load_run_config(_toml(tmp_path, "[capture]\nbatch_size = 3\n[compare]\nn_boot = 9\n[cluster]\nreplicas = 2\n"))
    assert isinstance(cfg, RunConfig)
    assert cfg.capture.batch_size == 3 and cfg.capture.max_length == CaptureConfig.__dataclass_fields__[
        "max_length"].default
    assert cfg.compare == CompareConfig(n_boot=9) and cfg.cluster.replicas == 2 and cfg.cluster.uses_ray
    c = cfg.capture_config(cfg.checkpoints[0], "x.zarr", resume=True)
    assert (c.out, c.resume, c.batch_size, c.prompts) == ("x.zarr", True, 3, cfg.prompts)
    record = cfg.record()
    assert "model" not in record["capture"] and record["capture"]["batch_size"] == 3
    assert record["compare"]["null_splits"] == 32  # defaults are recorded, not only the keys given


@pytest.mark.parametrize("body, needle", [
    ("[compare]\nnboot = 3\n", r"unknown key\(s\) \['nboot'\] in \[compare\]"),
    ("[cluster]\nreplicas = \"2\"\n", r"\[cluster\]: key 'replicas' = '2' has the wrong type; expected int"),
    ("[capture]\nout = \"x\"\n", r"\[capture\] may not set \['out'\]; the run sets them"),
    ("[compare]\nn_boot = 0\n", r"n_boot=0: the ΔL bootstrap needs ≥ 1"),
])
def test_run_config_tables_are_checked_at_load(tmp_path, body, needle):
    with pytest.raises(InputError, match=needle):
        load_run_config(_toml(tmp_path, body))


def test_an_adapter_belongs_to_its_checkpoint_not_to_the_capture_table(tmp_path):
    f = tmp_path / "run.toml"
    (tmp_path / "p.jsonl").write_text('{"id": "a", "prompt": "hi"}\n')
    f.write_text('[run]\nout = "o"\nprompts = "p.jsonl"\n[[checkpoints]]\nlabel = "base"\npath = "m"\n'
                 '[[checkpoints]]\nlabel = "dpo"\npath = "m"\nadapter = "lora/dpo"\n')
    cfg = load_run_config(str(f))
    base, dpo = (cfg.capture_config(ck, "x.zarr") for ck in cfg.checkpoints)
    assert base.adapter is None and dpo.adapter == str((tmp_path / "lora" / "dpo").resolve())
    with pytest.raises(InputError, match=r"\[capture\] may not set \['adapter'\]"):
        load_run_config(_toml(tmp_path, '[capture]\nadapter = "x"\n'))


def test_help_shows_toml_names_as_written():
    """Bracketed TOML names in help are text, not markup (rich used to eat '[run]' and '[[checkpoints]]')."""
    from typer.testing import CliRunner

    from spinal.cli.app import app

    r = CliRunner().invoke(app, ["run", "--help"], terminal_width=200)
    assert r.exit_code == 0
    assert "[run] out/prompts, [[checkpoints]], [capture], [analyze], [compare]" in r.output
    assert "[cluster] replicas" in r.output


def test_usage_lines_name_arguments_as_unix_usage_does():
    """`Usage: spinal analyze [OPTIONS] STORE`, not typer's '{store}' (which reads as an unfilled template)."""
    from typer.testing import CliRunner

    from spinal.cli.app import app

    for verb, usage in [("analyze", "[OPTIONS] STORE"), ("report", "[OPTIONS] TRACES..."), ("run", "[OPTIONS] CONFIG"),
                        ("compare", "[OPTIONS] TRACES..."), ("verify", "[OPTIONS] STORE")]:
        r = CliRunner().invoke(app, [verb, "--help"], terminal_width=200)
        assert r.exit_code == 0 and f"Usage: spinal {verb} {usage}\n" in r.output, (verb, r.output[:200])
        assert "{" not in r.output.splitlines()[0]


@pytest.mark.parametrize("verb, says", [("capture", "finished units are kept (rerun with --resume)"),
                                        ("analyze", "nothing was written (outputs appear whole or not at all)"),
                                        ("verify", "nothing stored before was touched")])
def test_ctrl_c_says_what_this_verb_leaves(verb, says, capsys):
    import typer

    from spinal.cli.terminal import cli_errors

    def body():
        raise KeyboardInterrupt

    body.__name__ = verb
    with pytest.raises(typer.Exit) as e:
        cli_errors(body)()
    assert e.value.exit_code == 130
    assert capsys.readouterr().err.strip() == f"interrupted; {says}" + ("" if verb != "analyze" else
                                                                         " and nothing stored before was touched")


def test_the_subset_options_are_checked_in_one_place_for_a_capture_and_a_prompt_loader():
    """limit and sample: negative or both is refused by PromptOptions, and a CaptureConfig says the same words."""
    from spinal.capture_config import PromptOptions

    for kw, words in (({"limit": 4, "sample": 4}, "limit=4 and sample=4: give one of them"),
                      ({"sample": -1}, "sample=-1; must be ≥ 0 (0: every row)")):
        with pytest.raises(InputError) as loader:
            PromptOptions(**kw)
        with pytest.raises(InputError) as capture:
            CaptureConfig(model="m", prompts="p.jsonl", out="o.zarr", **kw)
        assert str(loader.value) == str(capture.value) == words
