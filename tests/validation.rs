//! Every validation error: its code, message, `file:line:col` and hint; all errors of a flow at once;
//! exit code 2 and nothing run.

use crate::util::Scratch;

fn invalid(flow: &str) -> String {
    let s = Scratch::new();
    s.write("flow.toml", flow);
    let out = s.run(&["run", "flow.toml"]);
    assert_eq!(out.code, 2, "expected exit 2\nstdout:{}\nstderr:{}", out.stdout, out.stderr);
    assert!(out.stdout.is_empty(), "nothing is reported as run: {}", out.stdout);
    assert!(!s.path().join(".flowrun").exists(), "the cache was not even opened");
    out.stderr
}

#[test]
fn unknown_node_function_suggests_the_nearest_name() {
    let err = invalid("[flow]\nname = \"f\"\n\n[nodes.a]\nfn = \"squre\"\nparams = { x = 2 }\n");
    assert!(
        err.contains("error[unknown-function]: node `a` uses function `squre`, which is not a registered node"),
        "{err}"
    );
    assert!(err.contains("--> flow.toml:5:6"), "{err}");
    assert!(err.contains("help: did you mean `square`?"), "{err}");
}

#[test]
fn missing_input_names_the_parameter_and_what_could_provide_it() {
    let err = invalid("[flow]\nname = \"f\"\n\n[nodes.total]\nfn = \"add\"\nparams = { a = 1 }\n");
    assert!(
        err.contains("error[missing-input]: node `total`: parameter `b` (i64) needs a value, but no node, config value or input is called `b`"),
        "{err}"
    );
    assert!(err.contains("--> flow.toml:4:8"), "{err}");
    assert!(err.contains("registered nodes returning `i64`"), "{err}");
}

#[test]
fn missing_input_through_an_explicit_binding() {
    let err = invalid(
        "[flow]\nname = \"f\"\n\n[nodes.total]\nfn = \"add\"\nparams = { a = 1 }\ninputs = { b = \"nowhere\" }\n",
    );
    assert!(
        err.contains(
            "parameter `b` (i64) is bound to `nowhere`, which no node, config value or input is called `nowhere`"
        ),
        "{err}"
    );
    assert!(err.contains("--> flow.toml:7:16"), "{err}");
}

#[test]
fn type_mismatch_shows_both_types_and_both_places() {
    let flow = "[flow]\nname = \"f\"\n\n[nodes.sq]\nfn = \"square\"\nparams = { x = 3 }\n\n[nodes.rows]\nfn = \"row_count\"\ninputs = { table = \"sq\" }\n";
    let err = invalid(flow);
    assert!(
        err.contains("error[type-mismatch]: type mismatch: node `rows` parameter `table` expects `Table`, but node `sq` returns `i64`"),
        "{err}"
    );
    assert!(err.contains("--> flow.toml:10:20"), "{err}");
    assert!(err.contains("::: flow.toml:4:8"), "the producer's place is shown too: {err}");
}

#[test]
fn cycle_prints_its_path() {
    let flow = "[flow]\nname = \"f\"\n\n[nodes.a]\nfn = \"noop\"\ninputs = { x = \"b\" }\n\n[nodes.b]\nfn = \"noop\"\ninputs = { x = \"c\" }\n\n[nodes.c]\nfn = \"noop\"\ninputs = { x = \"a\" }\n";
    let err = invalid(flow);
    // data-flow order: a feeds c, c feeds b, b feeds a
    assert!(err.contains("error[cycle]: cycle: a -> c -> b -> a (each node feeds the next)"), "{err}");
    assert!(err.contains("--> flow.toml:4:8"), "{err}");
}

#[test]
fn duplicate_node_names_show_both_definitions() {
    let flow = "[flow]\nname = \"f\"\n\n[nodes.sq_2]\nfn = \"square\"\nparams = { x = 2 }\n\n[nodes.square.parameterize.sq_2]\nparams = { x = 3 }\n";
    let err = invalid(flow);
    assert!(err.contains("error[duplicate-node]: two nodes are called `sq_2`"), "{err}");
    assert!(err.contains("--> flow.toml:8:28"), "{err}");
    assert!(err.contains("::: flow.toml:4:8"), "{err}");
}

#[test]
fn duplicate_tables_are_a_toml_error_with_location() {
    let err = invalid("[flow]\nname = \"f\"\n\n[nodes.a]\nfn = \"noop\"\n\n[nodes.a]\nfn = \"noop\"\n");
    assert!(err.contains("error[toml-syntax]: invalid flow file:"), "{err}");
    assert!(err.contains("--> flow.toml:7:"), "{err}");
}

#[test]
fn unknown_config_keys_are_reported() {
    let err = invalid(
        "[flow]\nname = \"f\"\noutputs = [\"items\"]\n\n[config]\nn = 3\nnn = 4\n\n[nodes.items]\nfn = \"range\"\n",
    );
    assert!(err.contains("error[unknown-config-key]: config key `nn` is not read by any node"), "{err}");
    assert!(err.contains("--> flow.toml:7:6"), "{err}");
    let err =
        invalid("[flow]\nname = \"f\"\n\n[nodes.items]\nfn = \"range\"\nparams = { n = 2 }\nwhen = { mode = \"x\" }\n");
    assert!(err.contains("`when` reads config key `mode`, which [config] does not have"), "{err}");
    assert!(err.contains("--> flow.toml:7:10"), "{err}");
}

#[test]
fn bad_value_types_point_at_the_value() {
    let err = invalid("[flow]\nname = \"f\"\n\n[nodes.items]\nfn = \"range\"\nparams = { n = \"ten\" }\n");
    assert!(
        err.contains("error[bad-value]: node `items`: parameter `n` is a `i64`, but the literal is a string \"ten\""),
        "{err}"
    );
    assert!(err.contains("--> flow.toml:6:16"), "{err}");
    let err = invalid("[flow]\nname = \"f\"\n\n[nodes.items]\nfn = \"range\"\ncache = \"sometimes\"\n");
    assert!(err.contains("error[bad-value]"), "{err}");
    assert!(err.contains("--> flow.toml:6:9"), "{err}");
}

#[test]
fn all_errors_are_collected() {
    let flow = "[flow]\nname = \"f\"\n\n[config]\nunused = 1\n\n[nodes.a]\nfn = \"squre\"\n\n[nodes.b]\nfn = \"add\"\nparams = { a = \"x\", b = 2 }\n\n[nodes.c]\nfn = \"noop\"\n";
    let err = invalid(flow);
    assert!(err.contains("error[unknown-function]"), "{err}");
    assert!(err.contains("error[bad-value]"), "{err}");
    assert!(err.contains("error[missing-input]: node `c`"), "{err}");
    assert!(err.contains("flow is invalid: 3 errors (nothing was run)"), "{err}");
}

#[test]
fn set_of_an_unknown_config_key_is_refused() {
    let s = Scratch::new();
    s.write("flow.toml", crate::util::FANOUT);
    let out = s.run(&["run", "flow.toml", "--set", "m=3"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("--set m=3: the flow has no config key `m`"), "{}", out.stderr);
    assert!(out.stderr.contains("did you mean `n`?"), "{}", out.stderr);
}

#[test]
fn fan_out_mixing_is_refused() {
    let flow = "[flow]\nname = \"f\"\n\n[nodes.xs]\nfn = \"range\"\nparams = { n = 2 }\n\n[nodes.ys]\nfn = \"range\"\nparams = { n = 3 }\n\n[nodes.both]\nfn = \"add\"\ninputs = { a = \"xs\", b = \"ys\" }\n";
    let err = invalid(flow);
    assert!(err.contains("error[fanout]: node `both` combines items of two different fan-outs"), "{err}");
}

#[test]
fn json_errors_are_machine_readable() {
    let s = Scratch::new();
    s.write("flow.toml", "[flow]\nname = \"f\"\n\n[nodes.a]\nfn = \"squre\"\n");
    let out = s.run(&["--json", "run", "flow.toml"]);
    assert_eq!(out.code, 2);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["status"], "invalid");
    assert_eq!(v["errors"][0]["code"], "unknown-function");
    assert_eq!(v["errors"][0]["location"], "flow.toml:5:6");
}

#[test]
fn a_function_outside_the_flow_modules_says_so() {
    let err = invalid("[flow]\nname = \"f\"\nmodules = [\"pv\"]\n\n[nodes.n]\nfn = \"square\"\nparams = { x = 2 }\n");
    assert!(err.contains("error[unknown-function]: node `n` uses function `square`"), "{err}");
    assert!(err.contains("`square` is in module `flowrun_nodes::demo`, which [flow] modules does not list"), "{err}");
}
