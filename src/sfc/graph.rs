//! A recipe as a [Mermaid](https://mermaid.js.org) flowchart, for
//! documentation and review (`microdcs recipe graph FILE`; GitHub renders
//! ```` ```mermaid ```` blocks).
//!
//! - A step is a box with its name and one line per action:
//!   qualifier (with its time for `D`/`L`), name, `push`/`pull` and TypeId.
//!   The initial step has a double border (`[[…]]`, class `initial`).
//! - A transition is an arrow labelled with its condition (and its priority
//!   when not 0).
//! - A branch is a subgraph between a fork and a join node: bars (`═══`,
//!   class `simultaneous`) for a simultaneous branch, diamonds for a
//!   selection. Entering the branch leads to the fork, leaving it starts at
//!   the join. The implicit links (fork to a simultaneous path, path element
//!   to the next one without a recipe transition, path end to join) are
//!   dotted.
//!
//! Node ids are generated (`s0`, `b0_fork`, …), so any name is safe; labels
//! are escaped with Mermaid's entity codes (`#quot;`, `#lt;`, …).

use super::recipe::{BranchKind, Qualifier, Recipe};
use std::collections::HashMap;
use std::fmt::Write;

/// Renders `recipe` as Mermaid `flowchart TD` text (ends with a newline).
///
/// # Example
///
/// ```
/// use microdcs::sfc::{graph::mermaid, recipe::Recipe};
///
/// let recipe: Recipe = r#"{
///     "Steps": [{"Name": "load", "Initial": true}, {"Name": "done"}],
///     "Transitions": [{"Source": "load", "Target": "done", "Condition": "part.ok"}],
///     "Actions": [{"Name": "part", "Step": "load", "Qualifier": "N",
///                  "Interaction": "pull_event", "TypeId": "com.example.part.v1",
///                  "TimeoutSeconds": 60}]
/// }"#.parse().map_err(|e| format!("{e}"))?;
/// let text = mermaid(&recipe);
/// assert!(text.starts_with("flowchart TD\n"));
/// assert!(text.contains(r#"s0 -->|"part.ok"| s1"#));
/// # Ok::<(), String>(())
/// ```
#[must_use]
pub fn mermaid(recipe: &Recipe) -> String {
    Graph::new(recipe).render()
}

struct Graph<'a> {
    recipe: &'a Recipe,
    steps: HashMap<&'a str, usize>,
    branches: HashMap<&'a str, usize>,
    /// Branch index → indices of the branches nested directly in it.
    children: Vec<Vec<usize>>,
    /// Elements that are in some branch's path.
    nested: HashMap<&'a str, usize>,
    out: String,
}

impl<'a> Graph<'a> {
    fn new(recipe: &'a Recipe) -> Self {
        let steps = recipe
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), i))
            .collect();
        let branches: HashMap<&str, usize> = recipe
            .branches
            .iter()
            .enumerate()
            .map(|(i, b)| (b.name.as_str(), i))
            .collect();
        let mut children = vec![Vec::new(); recipe.branches.len()];
        let mut nested = HashMap::new();
        for (b, branch) in recipe.branches.iter().enumerate() {
            for element in branch.paths.iter().flatten() {
                nested.insert(element.as_str(), b);
                if let Some(&child) = branches.get(element.as_str()) {
                    children[b].push(child);
                }
            }
        }
        Graph {
            recipe,
            steps,
            branches,
            children,
            nested,
            out: String::from("flowchart TD\n"),
        }
    }

    fn render(mut self) -> String {
        // Declarations: top-level steps and branches, branches as nested
        // subgraphs holding their paths' elements.
        for (i, step) in self.recipe.steps.iter().enumerate() {
            if !self.nested.contains_key(step.name.as_str()) {
                self.step_node(i, 1);
            }
        }
        for b in 0..self.recipe.branches.len() {
            let name = self.recipe.branches[b].name.as_str();
            if !self.nested.contains_key(name) {
                self.branch_subgraph(b, 1, &mut Vec::new());
            }
        }

        // Links: recipe transitions, then the implicit branch links.
        for t in &self.recipe.transitions {
            let from = self.source_id(&t.source, &t.target);
            let to = self.target_id(&t.target);
            let mut label = t.condition.to_string();
            if t.priority != 0 {
                let _ = write!(label, " [priority {}]", t.priority);
            }
            let _ = writeln!(self.out, "    {from} -->|\"{}\"| {to}", escape(&label));
        }
        for (b, branch) in self.recipe.branches.iter().enumerate() {
            for path in &branch.paths {
                let (Some(first), Some(last)) = (path.first(), path.last()) else {
                    continue;
                };
                if branch.kind == BranchKind::Simultaneous {
                    let to = self.target_id(first);
                    let _ = writeln!(self.out, "    b{b}_fork -.-> {to}");
                }
                for pair in path.windows(2) {
                    let explicit = self
                        .recipe
                        .transitions
                        .iter()
                        .any(|t| t.source == pair[0] && t.target == pair[1]);
                    if !explicit {
                        let from = self.exit_id(&pair[0]);
                        let to = self.target_id(&pair[1]);
                        let _ = writeln!(self.out, "    {from} -.-> {to}");
                    }
                }
                let from = self.exit_id(last);
                let _ = writeln!(self.out, "    {from} -.-> b{b}_join");
            }
        }

        self.out.push_str(
            "    classDef initial stroke-width:3px\n    \
             classDef simultaneous fill:#222,color:#fff\n",
        );
        self.out
    }

    fn step_node(&mut self, i: usize, depth: usize) {
        let step = &self.recipe.steps[i];
        let mut label = format!("<b>{}</b>", escape(&step.name));
        for action in self.recipe.actions_of(&step.name) {
            let qualifier = match action.qualifier {
                Qualifier::N => "N".to_owned(),
                Qualifier::P => "P".to_owned(),
                Qualifier::P0 => "P0".to_owned(),
                Qualifier::P1 => "P1".to_owned(),
                Qualifier::S => "S".to_owned(),
                Qualifier::R => "R".to_owned(),
                Qualifier::L => format!("L {}", seconds(action.duration)),
                Qualifier::D => format!("D {}", seconds(action.delay)),
            };
            let what = if action.qualifier == Qualifier::R {
                format!("resets {}", action.type_id)
            } else {
                let verb = match action.interaction {
                    super::recipe::Interaction::PushCommand => "push",
                    super::recipe::Interaction::PullEvent => "pull",
                };
                format!("{verb} {}", action.type_id)
            };
            let _ = write!(
                label,
                "<br/>{} {}: {}",
                escape(&qualifier),
                escape(&action.name),
                escape(&what)
            );
        }
        let indent = "    ".repeat(depth);
        if step.initial {
            let _ = writeln!(self.out, "{indent}s{i}[[\"{label}\"]]:::initial");
        } else {
            let _ = writeln!(self.out, "{indent}s{i}[\"{label}\"]");
        }
    }

    fn branch_subgraph(&mut self, b: usize, depth: usize, stack: &mut Vec<usize>) {
        // A validated recipe has no nesting cycles; a hand-built one must
        // not make this recurse for ever.
        if stack.contains(&b) {
            return;
        }
        stack.push(b);
        let branch = &self.recipe.branches[b];
        let indent = "    ".repeat(depth);
        let name = escape(&branch.name);
        let (kind, fork, join) = match branch.kind {
            BranchKind::Simultaneous => (
                "simultaneous",
                format!("b{b}_fork[\"═══ {name} ═══\"]:::simultaneous"),
                format!("b{b}_join[\"═══ {name} ═══\"]:::simultaneous"),
            ),
            BranchKind::Selection => (
                "selection",
                format!("b{b}_fork{{\"{name}\"}}"),
                format!("b{b}_join{{\"{name}\"}}"),
            ),
        };
        let _ = writeln!(self.out, "{indent}subgraph b{b}[\"{name} ({kind})\"]");
        let _ = writeln!(self.out, "{indent}    {fork}");
        for element in branch.paths.iter().flatten() {
            if let Some(&i) = self.steps.get(element.as_str()) {
                self.step_node(i, depth + 1);
            } else if let Some(&child) = self.branches.get(element.as_str()) {
                if self.children[b].contains(&child) {
                    self.branch_subgraph(child, depth + 1, stack);
                }
            }
        }
        let _ = writeln!(self.out, "{indent}    {join}");
        let _ = writeln!(self.out, "{indent}end");
        stack.pop();
    }

    /// The node a link into `name` goes to.
    fn target_id(&self, name: &str) -> String {
        if let Some(i) = self.steps.get(name) {
            format!("s{i}")
        } else if let Some(b) = self.branches.get(name) {
            format!("b{b}_fork")
        } else {
            // Unresolved in a hand-built recipe: show it as a loose node.
            format!("missing_{}", mermaid_id(name))
        }
    }

    /// The node a link out of `name` starts at (a branch is left at its join).
    fn exit_id(&self, name: &str) -> String {
        match self.branches.get(name) {
            Some(b) => format!("b{b}_join"),
            None => self.target_id(name),
        }
    }

    /// A transition from a branch into its own path starts at the fork
    /// (entry transition); any other from a branch at the join (exit).
    fn source_id(&self, source: &str, target: &str) -> String {
        if let Some(&b) = self.branches.get(source) {
            if self.nested.get(target) == Some(&b) {
                return format!("b{b}_fork");
            }
        }
        self.exit_id(source)
    }
}

fn seconds(d: Option<std::time::Duration>) -> String {
    match d {
        Some(d) => format!("{}s", d.as_secs_f64()),
        None => "?".to_owned(),
    }
}

/// Escapes text for a quoted Mermaid label (entity codes, no line breaks).
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '#' => out.push_str("#35;"),
            '"' => out.push_str("#quot;"),
            '<' => out.push_str("#lt;"),
            '>' => out.push_str("#gt;"),
            '&' => out.push_str("#amp;"),
            '|' => out.push_str("#124;"),
            '`' => out.push_str("#96;"),
            '\n' | '\r' | '\t' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// An identifier-safe rendering of any name.
fn mermaid_id(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe(json: &str) -> Recipe {
        match json.parse::<Recipe>() {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        }
    }

    const SIMULTANEOUS: &str = r#"{
        "Steps": [{"Name": "load", "Initial": true}, {"Name": "left"}, {"Name": "right"},
                  {"Name": "check"}, {"Name": "done"}],
        "Branches": [{"Name": "press", "Type": "simultaneous",
                      "Branches": [["left", "check"], ["right"]]}],
        "Transitions": [
            {"Source": "load", "Target": "press", "Condition": "always"},
            {"Source": "press", "Target": "done", "Condition": "results.l.force > 2 && r.ok", "Priority": 2}
        ],
        "Actions": [
            {"Name": "l", "Step": "left", "Qualifier": "N", "Interaction": "push_command",
             "TypeId": "com.example.press.v1", "TimeoutSeconds": 5, "Parameters": {"Side": "L"}},
            {"Name": "r", "Step": "right", "Qualifier": "D", "DelaySeconds": 1.5,
             "Interaction": "push_command", "TypeId": "com.example.press.v1", "TimeoutSeconds": 5}
        ]
    }"#;

    #[test]
    fn simultaneous_branch_has_bars_and_dotted_implicit_links() {
        let text = mermaid(&recipe(SIMULTANEOUS));
        let expected = [
            "flowchart TD",
            "    s0[[\"<b>load</b>\"]]:::initial",
            "    s4[\"<b>done</b>\"]",
            "    subgraph b0[\"press (simultaneous)\"]",
            "        b0_fork[\"═══ press ═══\"]:::simultaneous",
            "        s1[\"<b>left</b><br/>N l: push com.example.press.v1\"]",
            "        s3[\"<b>check</b>\"]",
            "        s2[\"<b>right</b><br/>D 1.5s r: push com.example.press.v1\"]",
            "        b0_join[\"═══ press ═══\"]:::simultaneous",
            "    end",
            "    s0 -->|\"always\"| b0_fork",
            "    b0_join -->|\"results.l.force #gt; 2 #amp;#amp; r.ok [priority 2]\"| s4",
            "    b0_fork -.-> s1",
            "    s1 -.-> s3",
            "    s3 -.-> b0_join",
            "    b0_fork -.-> s2",
            "    s2 -.-> b0_join",
        ];
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(&lines[..expected.len()], &expected[..], "{text}");
    }

    #[test]
    fn selection_branch_has_diamonds_and_entry_edges_from_the_fork() {
        let text = mermaid(&recipe(
            r#"{
            "Steps": [{"Name": "start", "Initial": true}, {"Name": "a"}, {"Name": "b"}, {"Name": "end"}],
            "Branches": [{"Name": "pick", "Type": "selection", "Branches": [["a"], ["b"]]}],
            "Transitions": [
                {"Source": "start", "Target": "pick", "Condition": ""},
                {"Source": "pick", "Target": "a", "Condition": "params.variant == \"A\"", "Priority": 1},
                {"Source": "pick", "Target": "b", "Condition": "true"},
                {"Source": "pick", "Target": "end", "Condition": "always"}
            ],
            "Actions": []
        }"#,
        ));
        assert!(text.contains("        b0_fork{\"pick\"}\n"), "{text}");
        assert!(text.contains("        b0_join{\"pick\"}\n"), "{text}");
        assert!(
            text.contains("    b0_fork -->|\"params.variant == #quot;A#quot; [priority 1]\"| s1\n"),
            "{text}"
        );
        assert!(text.contains("    b0_fork -->|\"true\"| s2\n"), "{text}");
        assert!(text.contains("    b0_join -->|\"always\"| s3\n"), "{text}");
        assert!(!text.contains("b0_fork -.->"), "no implicit entry: {text}");
    }

    #[test]
    fn nested_branches_are_nested_subgraphs() {
        let text = mermaid(&recipe(
            r#"{
            "Steps": [{"Name": "s", "Initial": true}, {"Name": "x"}, {"Name": "y"}, {"Name": "z"}],
            "Branches": [
                {"Name": "outer", "Type": "simultaneous", "Branches": [["x", "inner"]]},
                {"Name": "inner", "Type": "simultaneous", "Branches": [["y"], ["z"]]}
            ],
            "Transitions": [{"Source": "s", "Target": "outer", "Condition": "always"}],
            "Actions": []
        }"#,
        ));
        assert!(
            text.contains("    subgraph b0[\"outer (simultaneous)\"]\n"),
            "{text}"
        );
        assert!(
            text.contains("        subgraph b1[\"inner (simultaneous)\"]\n"),
            "{text}"
        );
        assert!(text.contains("    s1 -.-> b1_fork\n"), "{text}");
        assert!(text.contains("    b1_join -.-> b0_join\n"), "{text}");
        assert_eq!(text.matches("subgraph b1").count(), 1, "{text}");
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(
            escape("a \"b\" <c> & d | #e `f`\ng"),
            "a #quot;b#quot; #lt;c#gt; #amp; d #124; #35;e #96;f#96; g"
        );
    }
}
