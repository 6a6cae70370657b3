//! The README's quickstart, run as written: the commands between its `quickstart:begin` and
//! `quickstart:end` markers, in order, each output checked. Editing the README without keeping
//! it working fails this test.
//!
//! Two things differ from a person's terminal, neither in the commands themselves: the server
//! listens on ports the system picks (the environment points the other commands at them, as the
//! defaults point at 8080 and 8883), and before each command the test waits until what runs in
//! the background is ready, as a person would see it is before typing on.

use crate::cli_verbs::{Background, Cli};
use std::collections::HashMap;

const README: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"));

/// One command of the quickstart.
#[derive(Debug)]
struct Step {
    args: Vec<String>,
    background: bool,
}

impl Step {
    /// The verb, e.g. `devices configs update`: the words before the first argument.
    fn verb(&self) -> String {
        let words: Vec<&str> = self.args.iter().take_while(|a| !a.starts_with('-')).map(String::as_str).collect();
        let n = match words.first().copied() {
            Some("serve") => 1,
            Some("devices")
                if matches!(words.get(1).copied(), Some("configs" | "commands" | "states" | "gateways")) =>
            {
                3
            }
            _ => 2,
        };
        words[..n.min(words.len())].join(" ")
    }

    fn flag(&self, name: &str) -> &str {
        let i = self.args.iter().position(|a| a == name).unwrap_or_else(|| panic!("no {name} in {:?}", self.args));
        &self.args[i + 1]
    }
}

/// Splits a shell line into words: blanks separate, quotes group, a backslash escapes.
fn words(line: &str) -> Vec<String> {
    let (mut out, mut word, mut in_word) = (Vec::new(), String::new(), false);
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                word.extend(chars.by_ref().take_while(|&c| c != '\''));
            }
            '"' => {
                in_word = true;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => word.extend(chars.next()),
                        c => word.push(c),
                    }
                }
            }
            '\\' => {
                in_word = true;
                word.extend(chars.next());
            }
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut word));
                }
                in_word = false;
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        out.push(word);
    }
    out
}

/// The commands of the README's quickstart section.
fn quickstart() -> Vec<Step> {
    let begin = README.find("<!-- quickstart:begin").expect("README has a quickstart:begin marker");
    let end = README[begin..].find("<!-- quickstart:end -->").expect("README has a quickstart:end marker") + begin;
    let mut steps = Vec::new();
    let mut in_code = false;
    let mut pending = String::new();
    for line in README[begin..end].lines() {
        if line.starts_with("```") {
            in_code = !in_code;
            continue;
        }
        let line = line.trim();
        if !in_code || line.is_empty() || line.starts_with('#') {
            continue;
        }
        // A trailing backslash continues the command on the next line.
        if let Some(head) = line.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        let command = std::mem::take(&mut pending);
        let (command, background) = match command.trim_end().strip_suffix('&') {
            Some(c) => (c.to_owned(), true),
            None => (command, false),
        };
        let mut args = words(&command);
        assert_eq!(
            args.first().map(String::as_str),
            Some("ferrocore"),
            "a quickstart command that is not ferrocore: {command}"
        );
        args.remove(0);
        steps.push(Step { args, background });
    }
    assert!(!in_code && pending.is_empty(), "an unterminated code block or command in the quickstart");
    steps
}

#[test]
fn shell_words() {
    assert_eq!(words(r#"a 'b c' "d \"e\"" f\ g  "#), ["a", "b c", "d \"e\"", "f g"]);
    assert_eq!(words("--config-data '{\"led\": \"on\"}'"), ["--config-data", "{\"led\": \"on\"}"]);
}

#[tokio::test]
async fn the_readme_quickstart_works_as_written() {
    let steps = quickstart();
    let verbs: Vec<String> = steps.iter().map(Step::verb).collect();
    assert_eq!(
        verbs,
        [
            "serve",
            "registries create",
            "keys generate",
            "devices create",
            "device simulate",
            "devices configs update",
            "devices commands send",
            "events tail"
        ],
        "the quickstart walks serve → registry → keys → device → simulate → config → command → tail"
    );

    let dir = tempfile::tempdir().unwrap();
    let mut cli = Cli { cwd: dir.path().to_owned(), env: vec![] };
    let mut running: HashMap<String, Background> = HashMap::new();
    // What each background command must print once the later commands have run.
    let mut later: Vec<(String, String)> = Vec::new();
    for step in &steps {
        let args: Vec<&str> = step.args.iter().map(String::as_str).collect();
        let verb = step.verb();
        match verb.as_str() {
            "serve" => {
                // Ports picked by the system; in a terminal, the defaults 8080, 8081 and 8883.
                let mut serve = Cli {
                    cwd: cli.cwd.clone(),
                    env: [
                        ("FERROCORE_HTTP", "127.0.0.1:0"),
                        ("FERROCORE_GRPC", "127.0.0.1:0"),
                        ("FERROCORE_MQTTS", "127.0.0.1:0"),
                    ]
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .to_vec(),
                }
                .spawn(&args);
                serve.out("ferrocore listening ").await;
                let line = serve.stdout.seen.iter().find(|l| l.starts_with("ferrocore listening ")).unwrap().clone();
                let addr = |name: &str| -> String {
                    let field = line.split(' ').find_map(|f| f.strip_prefix(&format!("{name}="))).unwrap();
                    field.to_owned()
                };
                let mqtts_port = addr("mqtts").rsplit(':').next().unwrap().to_owned();
                cli.env.push(("FERROCORE_SERVER".into(), format!("http://{}", addr("http"))));
                cli.env.push(("FERROCORE_MQTT_SERVER".into(), format!("localhost:{mqtts_port}")));
                running.insert(verb, serve);
            }
            "device simulate" => {
                let mut sim = cli.spawn(&args);
                // Connected and subscribed: commands can reach it from now on.
                sim.err("Subscribed to /devices/my-device/config and /devices/my-device/commands/#.").await;
                running.insert(verb, sim);
            }
            "events tail" => {
                assert!(!step.background, "tail is the last command, in the foreground");
                let mut tail = cli.spawn(&args);
                // Telemetry from the simulator, with IoT Core's attributes.
                tail.out("deviceId=my-device").await;
                tail.out(r#""seq":3"#).await;
                tail.interrupt();
                running.insert(verb, tail);
            }
            _ => {
                assert!(!step.background, "{verb} runs in the foreground");
                let out = cli.run(&args).await.success();
                match verb.as_str() {
                    "registries create" => assert_eq!(out.stderr, "Created registry [my-registry].\n"),
                    "keys generate" => {
                        let prefix = step.flag("--out");
                        for suffix in ["private", "public", "cert"] {
                            assert!(dir.path().join(format!("{prefix}_{suffix}.pem")).exists(), "{}", out.stdout);
                        }
                    }
                    "devices create" => {
                        assert!(out.stderr.starts_with("Created device [my-device] (numeric id "), "{}", out.stderr)
                    }
                    "devices configs update" => {
                        assert_eq!(out.stderr, "Updated the config of device [my-device] to version 2.\n");
                        later.push(("device simulate".into(), format!("config: {}", step.flag("--config-data"))));
                    }
                    "devices commands send" => {
                        assert_eq!(out.stderr, "Sent the command to device [my-device].\n");
                        later.push(("device simulate".into(), format!("command: {}", step.flag("--command-data"))));
                    }
                    other => panic!("the quickstart has a command this test does not check: {other}"),
                }
            }
        }
    }
    for (verb, line) in later {
        running.get_mut(&verb).unwrap().out(&line).await;
    }
    let mut sim = running.remove("device simulate").unwrap();
    sim.interrupt();
    assert!(sim.finish().await.success(), "{:#?}", sim.stderr.seen);
    let mut serve = running.remove("serve").unwrap();
    serve.interrupt();
    assert!(serve.finish().await.success(), "{:#?}", serve.stderr.seen);
}
