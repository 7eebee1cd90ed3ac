//! A recipe compiled into a net: steps, and transitions with *sets* of input
//! and output steps (IEC 61131-3 SFC evolution rules as a Petri net).
//!
//! Branches disappear in the compilation:
//!
//! - entering a simultaneous branch outputs the entry steps of all its paths
//!   at once; leaving it (its exit, or the next element of the enclosing
//!   path) needs the last step of every path active *and finished*;
//! - entering a selection branch becomes one alternative transition per path,
//!   guarded by that path's entry transition; leaving it needs the chosen
//!   path's last step finished;
//! - consecutive path elements without a transition in the recipe are joined
//!   by an implicit `always` transition;
//! - a top-level element with no way out ends its token when it is finished;
//!   the job is complete when no step is active any more.
//!
//! A step is *finished* when all its non-stored actions (qualifiers N, L, D)
//! are complete. A transition whose condition is `always` (or empty) also
//! needs its source steps finished; an expression condition does not (the
//! step's running actions are cancelled when it is left).

use super::condition::Condition;
use super::recipe::{BranchKind, Recipe};
use std::collections::BTreeMap;

/// Index of a step in [`Net::steps`].
pub type StepId = usize;

/// A condition to evaluate when a net transition is considered, with the
/// steps whose actions form its context (results, elapsed time).
#[derive(Debug, Clone)]
pub struct Guard {
    /// The condition.
    pub condition: Condition,
    /// The source steps of the recipe transition it comes from.
    pub context: Vec<StepId>,
}

/// A compiled transition.
#[derive(Debug, Clone)]
pub struct NetTransition {
    /// Steps that must be active; they are deactivated when it fires.
    pub inputs: Vec<StepId>,
    /// Steps that must also be finished (all non-stored actions complete).
    pub finished: Vec<StepId>,
    /// Steps activated when it fires (empty: the token ends).
    pub outputs: Vec<StepId>,
    /// Conditions that must all hold.
    pub guards: Vec<Guard>,
    /// Conflict order: of enabled transitions sharing an input, the lowest
    /// key fires (recipe priorities along the path, then recipe order).
    pub order: Vec<i64>,
    /// Human-readable origin (`press -> inspect`), for logs and errors.
    pub label: String,
}

/// The compiled recipe.
#[derive(Debug, Clone)]
pub struct Net {
    /// Step names; a [`StepId`] indexes this.
    pub steps: Vec<String>,
    /// The initial step.
    pub initial: StepId,
    /// All transitions.
    pub transitions: Vec<NetTransition>,
}

/// The recipe cannot be compiled (a structure validation lets through, or a
/// branch whose alternatives multiply beyond reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("recipe structure: {0}")]
pub struct NetError(pub String);

/// Alternatives multiply through nested selections inside simultaneous
/// branches; past this many a recipe is refused instead of exploding.
const MAX_ALTERNATIVES: usize = 256;

#[derive(Debug, Clone, Default)]
struct Entry {
    steps: Vec<StepId>,
    guards: Vec<(Condition, i64)>,
}

#[derive(Debug, Clone, Default)]
struct Exit {
    steps: Vec<StepId>,
    finished: Vec<StepId>,
}

struct Compiler<'a> {
    recipe: &'a Recipe,
    step_ids: BTreeMap<&'a str, StepId>,
}

impl<'a> Compiler<'a> {
    fn is_branch(&self, name: &str) -> bool {
        self.recipe.branch(name).is_some()
    }

    fn step(&self, name: &str) -> Result<StepId, NetError> {
        self.step_ids
            .get(name)
            .copied()
            .ok_or_else(|| NetError(format!("'{name}' is neither a step nor a branch")))
    }

    fn branch(&self, name: &str) -> Option<&'a super::recipe::Branch> {
        self.recipe.branch(name)
    }

    fn first<'p>(path: &'p [String], branch: &str) -> Result<&'p str, NetError> {
        path.first()
            .map(String::as_str)
            .ok_or_else(|| NetError(format!("branch '{branch}' has an empty path")))
    }

    fn last<'p>(path: &'p [String], branch: &str) -> Result<&'p str, NetError> {
        path.last()
            .map(String::as_str)
            .ok_or_else(|| NetError(format!("branch '{branch}' has an empty path")))
    }

    /// The ways `element` can be entered.
    fn entries(&self, element: &str, depth: usize) -> Result<Vec<Entry>, NetError> {
        if depth > 32 {
            return Err(NetError(format!(
                "branch '{element}' nests too deep (or in itself)"
            )));
        }
        let Some(b) = self.branch(element) else {
            return Ok(vec![Entry {
                steps: vec![self.step(element)?],
                guards: Vec::new(),
            }]);
        };
        let mut out: Vec<Entry> = Vec::new();
        match b.kind {
            BranchKind::Simultaneous => {
                out.push(Entry::default());
                for path in &b.paths {
                    let alts = self.entries(Self::first(path, &b.name)?, depth + 1)?;
                    out = product(&out, &alts, |a, b| Entry {
                        steps: [a.steps.clone(), b.steps.clone()].concat(),
                        guards: [a.guards.clone(), b.guards.clone()].concat(),
                    })?;
                }
            }
            BranchKind::Selection => {
                for path in &b.paths {
                    let first = Self::first(path, &b.name)?;
                    let entry = self
                        .recipe
                        .transitions
                        .iter()
                        .find(|t| t.source == b.name && t.target == first)
                        .ok_or_else(|| {
                            NetError(format!(
                                "selection branch '{}' has no entry transition to '{first}'",
                                b.name
                            ))
                        })?;
                    for alt in self.entries(first, depth + 1)? {
                        let mut guards = vec![(entry.condition.clone(), i64::from(entry.priority))];
                        guards.extend(alt.guards);
                        out.push(Entry {
                            steps: alt.steps,
                            guards,
                        });
                    }
                }
            }
        }
        check_size(out.len(), element)?;
        Ok(out)
    }

    /// The ways `element` can be *finished* (left through its end).
    fn finishes(&self, element: &str, depth: usize) -> Result<Vec<Exit>, NetError> {
        if depth > 32 {
            return Err(NetError(format!(
                "branch '{element}' nests too deep (or in itself)"
            )));
        }
        let Some(b) = self.branch(element) else {
            let s = self.step(element)?;
            return Ok(vec![Exit {
                steps: vec![s],
                finished: vec![s],
            }]);
        };
        let mut out: Vec<Exit> = Vec::new();
        match b.kind {
            BranchKind::Simultaneous => {
                out.push(Exit::default());
                for path in &b.paths {
                    let alts = self.finishes(Self::last(path, &b.name)?, depth + 1)?;
                    out = product(&out, &alts, |a, b| Exit {
                        steps: [a.steps.clone(), b.steps.clone()].concat(),
                        finished: [a.finished.clone(), b.finished.clone()].concat(),
                    })?;
                }
            }
            BranchKind::Selection => {
                for path in &b.paths {
                    out.extend(self.finishes(Self::last(path, &b.name)?, depth + 1)?);
                }
            }
        }
        check_size(out.len(), element)?;
        Ok(out)
    }

    /// The ways a transition with source `element` may fire: a step needs
    /// only to be active; a branch must be finished.
    fn sources(&self, element: &str) -> Result<Vec<Exit>, NetError> {
        if self.is_branch(element) {
            self.finishes(element, 0)
        } else {
            Ok(vec![Exit {
                steps: vec![self.step(element)?],
                finished: Vec::new(),
            }])
        }
    }

    /// Whether `t` enters a path of the selection branch it starts from.
    fn is_selection_entry(&self, source: &str, target: &str) -> bool {
        self.branch(source).is_some_and(|b| {
            b.kind == BranchKind::Selection
                && b.paths
                    .iter()
                    .any(|p| p.first().is_some_and(|f| f == target))
        })
    }

    /// The branch path `element` sits in, if any: (branch, path index, position).
    fn enclosing(&self, element: &str) -> Option<(&'a super::recipe::Branch, usize)> {
        self.recipe
            .enclosing_branch(element)
            .map(|(branch, _, position)| (branch, position))
    }

    #[allow(clippy::too_many_arguments)]
    fn link(
        &self,
        out: &mut Vec<NetTransition>,
        source: &str,
        target: Option<&str>,
        condition: &Condition,
        priority: i64,
        index: i64,
        label: &str,
    ) -> Result<(), NetError> {
        let targets = match target {
            Some(t) => self.entries(t, 0)?,
            None => vec![Entry::default()],
        };
        for exit in self.sources(source)? {
            for entry in &targets {
                let mut finished = exit.finished.clone();
                if matches!(condition, Condition::Always) {
                    finished.extend(exit.steps.iter().copied());
                }
                finished.sort_unstable();
                finished.dedup();
                let mut guards = vec![Guard {
                    condition: condition.clone(),
                    context: exit.steps.clone(),
                }];
                let mut order = vec![priority];
                for (c, p) in &entry.guards {
                    guards.push(Guard {
                        condition: c.clone(),
                        context: exit.steps.clone(),
                    });
                    order.push(*p);
                }
                order.push(index);
                out.push(NetTransition {
                    inputs: exit.steps.clone(),
                    finished,
                    outputs: entry.steps.clone(),
                    guards,
                    order,
                    label: label.to_owned(),
                });
            }
        }
        Ok(())
    }
}

fn check_size(n: usize, element: &str) -> Result<(), NetError> {
    if n > MAX_ALTERNATIVES {
        return Err(NetError(format!(
            "branch '{element}' has {n} combinations of paths (at most {MAX_ALTERNATIVES})"
        )));
    }
    Ok(())
}

fn product<T>(a: &[T], b: &[T], join: impl Fn(&T, &T) -> T) -> Result<Vec<T>, NetError> {
    if a.len().saturating_mul(b.len()) > MAX_ALTERNATIVES {
        return Err(NetError(format!(
            "more than {MAX_ALTERNATIVES} combinations of branch paths"
        )));
    }
    Ok(a.iter()
        .flat_map(|x| b.iter().map(|y| join(x, y)).collect::<Vec<_>>())
        .collect())
}

impl Net {
    /// Compiles a validated recipe.
    ///
    /// # Errors
    /// A structure the net cannot express (see [`NetError`]).
    pub fn compile(recipe: &Recipe) -> Result<Net, NetError> {
        let steps: Vec<String> = recipe.steps.iter().map(|s| s.name.clone()).collect();
        let step_ids = steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.as_str(), i))
            .collect();
        let c = Compiler { recipe, step_ids };
        let initial = recipe
            .steps
            .iter()
            .position(|s| s.initial)
            .ok_or_else(|| NetError("no initial step".into()))?;
        let mut transitions = Vec::new();
        // 1. The recipe's transitions (selection entries are folded into
        //    the transitions entering their branch).
        for (i, t) in recipe.transitions.iter().enumerate() {
            if c.is_selection_entry(&t.source, &t.target) {
                continue;
            }
            c.link(
                &mut transitions,
                &t.source,
                Some(&t.target),
                &t.condition,
                i64::from(t.priority),
                i as i64,
                &format!("{} -> {}", t.source, t.target),
            )?;
        }
        let base = recipe.transitions.len() as i64;
        for (bi, b) in recipe.branches.iter().enumerate() {
            // 2. Implicit `always` links between consecutive path elements.
            for path in &b.paths {
                for pair in path.windows(2) {
                    let explicit = recipe
                        .transitions
                        .iter()
                        .any(|t| t.source == pair[0] && t.target == pair[1]);
                    if !explicit {
                        c.link(
                            &mut transitions,
                            &pair[0],
                            Some(&pair[1]),
                            &Condition::Always,
                            0,
                            base + bi as i64,
                            &format!("{} -> {} (implicit)", pair[0], pair[1]),
                        )?;
                    }
                }
            }
        }
        // 3. Top-level elements with no way out end their token when done.
        let mut ends: Vec<&str> = Vec::new();
        for s in &recipe.steps {
            if c.enclosing(&s.name).is_none() {
                ends.push(&s.name);
            }
        }
        for b in &recipe.branches {
            if c.enclosing(&b.name).is_none() {
                ends.push(&b.name);
            }
        }
        for e in ends {
            let has_exit = recipe
                .transitions
                .iter()
                .any(|t| t.source == e && !c.is_selection_entry(&t.source, &t.target));
            if !has_exit {
                c.link(
                    &mut transitions,
                    e,
                    None,
                    &Condition::Always,
                    i64::MAX,
                    i64::MAX,
                    &format!("{e} (end)"),
                )?;
            }
        }
        Ok(Net {
            steps,
            initial,
            transitions,
        })
    }

    /// The id of a step by name.
    pub fn step_id(&self, name: &str) -> Option<StepId> {
        self.steps.iter().position(|s| s == name)
    }
}
