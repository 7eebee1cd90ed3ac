//! The generated state machine tables against an independent scan of the
//! ISA95-JOBCONTROL NodeSet: every `TransitionType` object declared under the
//! machine type (and under the types of its substate machines) must appear
//! exactly once, with the same number, from/to states and causes — and
//! nothing else.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use microdcs_codegen::{Generator, StateMachine};

const UA_TYPES: &str = "http://opcfoundation.org/UA/2011/03/UANodeSet.xsd";

fn nodeset_text() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../companion-specs/opc.ua.isa95-jobcontrol.nodeset2.xml");
    match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) => panic!("{}: {error}", path.display()),
    }
}

fn machines() -> Vec<StateMachine> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../companion-specs");
    let output = Generator::new()
        .nodeset(dir.join("opc.ua.isa95-jobcontrol.nodeset2.xml"))
        .nodeset(dir.join("Opc.Ua.Machinery.Jobs.Nodeset2.xml"))
        .nullable_field("ISA95StateDataType", "BrowsePath")
        .generate();
    match output {
        Ok(output) => output.state_machines,
        Err(error) => panic!("{error}"),
    }
}

/// (parent, name, number, from, to, causes) — as read straight from the XML.
type Row = (
    Option<String>,
    String,
    u32,
    String,
    String,
    BTreeSet<String>,
);

/// A deliberately naive reading of the XML, independent of the generator:
/// look at `<UAObject>` elements whose `ParentNodeId` is the machine type and
/// whose `HasTypeDefinition` is `TransitionType` (`i=2310`), and follow the
/// references written on them.
fn scan(text: &str, machine_type: &str, parent: Option<&str>, rows: &mut Vec<Row>) {
    let doc = match roxmltree::Document::parse(text) {
        Ok(doc) => doc,
        Err(error) => panic!("{error}"),
    };
    let elements: Vec<_> = doc
        .root_element()
        .children()
        .filter(|n| n.is_element())
        .collect();
    let by_id: HashMap<&str, roxmltree::Node<'_, '_>> = elements
        .iter()
        .filter_map(|e| Some((e.attribute("NodeId")?, *e)))
        .collect();
    let name = |id: &str| -> String {
        let node = by_id.get(id).copied();
        let browse = node.and_then(|n| n.attribute("BrowseName")).unwrap_or(id);
        browse.split_once(':').map_or(browse, |(_, n)| n).to_owned()
    };
    let refs = |node: roxmltree::Node<'_, '_>, kind: &str| -> Vec<String> {
        node.descendants()
            .filter(|r| r.has_tag_name((UA_TYPES, "Reference")))
            .filter(|r| {
                r.attribute("ReferenceType") == Some(kind)
                    && r.attribute("IsForward") != Some("false")
            })
            .filter_map(|r| r.text().map(|t| t.trim().to_owned()))
            .collect()
    };
    let number = |owner: &str, property: &str| -> u32 {
        elements
            .iter()
            .find(|e| {
                e.attribute("ParentNodeId") == Some(owner)
                    && e.attribute("BrowseName") == Some(property)
            })
            .and_then(|v| v.descendants().find(|d| d.tag_name().name() == "UInt32"))
            .and_then(|v| v.text())
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(u32::MAX)
    };
    for element in &elements {
        if element.tag_name().name() != "UAObject"
            || element.attribute("ParentNodeId") != Some(machine_type)
        {
            continue;
        }
        let Some(id) = element.attribute("NodeId") else {
            continue;
        };
        let definition = refs(*element, "HasTypeDefinition");
        if definition.iter().any(|d| d == "i=2310") {
            let from = refs(*element, "FromState");
            let to = refs(*element, "ToState");
            assert_eq!(
                (from.len(), to.len()),
                (1, 1),
                "{id}: one FromState and one ToState"
            );
            rows.push((
                parent.map(str::to_owned),
                name(id),
                number(id, "TransitionNumber"),
                name(&from[0]),
                name(&to[0]),
                refs(*element, "HasCause").iter().map(|c| name(c)).collect(),
            ));
        } else if definition.iter().any(|d| d == "i=2307") {
            for sub in refs(*element, "HasSubStateMachine") {
                let Some(sub_node) = by_id.get(sub.as_str()) else {
                    continue;
                };
                let Some(sub_type) = refs(*sub_node, "HasTypeDefinition").into_iter().next() else {
                    continue;
                };
                scan(text, &sub_type, Some(&name(id)), rows);
            }
        }
    }
}

fn generated_rows(machine: &StateMachine) -> Vec<Row> {
    machine
        .transitions
        .iter()
        .map(|t| {
            (
                t.parent.clone(),
                t.name.clone(),
                t.number,
                t.from.clone(),
                t.to.clone(),
                t.causes.iter().cloned().collect(),
            )
        })
        .collect()
}

fn machine<'a>(machines: &'a [StateMachine], name: &str) -> &'a StateMachine {
    match machines.iter().find(|m| m.name == name) {
        Some(machine) => machine,
        None => panic!("no state machine {name}"),
    }
}

#[test]
fn job_order_state_machine_has_exactly_the_transitions_of_the_nodeset() {
    let text = nodeset_text();
    let machines = machines();
    // ISA95JobOrderReceiverSubStatesType (ns=1;i=1008): the main states with
    // their substate machines.
    let mut expected = Vec::new();
    scan(&text, "ns=1;i=1008", None, &mut expected);
    let mut actual = generated_rows(machine(&machines, "ISA95JobOrderReceiverSubStatesType"));
    expected.sort();
    actual.sort();
    assert_eq!(
        expected.len(),
        13 + 2 * 5 + 2 + 1,
        "scan found {expected:#?}"
    );
    assert_eq!(actual, expected);
}

#[test]
fn receiver_object_type_has_the_thirteen_main_transitions() {
    let text = nodeset_text();
    let machines = machines();
    let mut expected = Vec::new();
    scan(&text, "ns=1;i=1002", None, &mut expected);
    let mut actual = generated_rows(machine(&machines, "ISA95JobOrderReceiverObjectType"));
    expected.sort();
    actual.sort();
    assert_eq!(expected.len(), 13);
    assert_eq!(actual, expected);
    // Spot checks against the specification text.
    let causes_of = |name: &str| actual.iter().find(|r| r.1 == name).map(|r| r.5.clone());
    assert_eq!(
        causes_of("FromAllowedToStartToRunning"),
        Some(BTreeSet::new())
    );
    assert_eq!(
        causes_of("FromRunningToInterrupted"),
        Some(BTreeSet::from(["Pause".to_owned()]))
    );
}

#[test]
fn states_carry_their_numbers_and_parents() {
    let machines = machines();
    let machine = machine(&machines, "ISA95JobOrderReceiverSubStatesType");
    let states: Vec<(Option<&str>, &str, u32)> = machine
        .states
        .iter()
        .map(|s| (s.parent.as_deref(), s.name.as_str(), s.number))
        .collect();
    let top = [
        (None, "NotAllowedToStart", 1),
        (None, "AllowedToStart", 2),
        (None, "Running", 3),
        (None, "Interrupted", 4),
        (None, "Ended", 5),
        (None, "Aborted", 6),
    ];
    assert_eq!(&states[..6], &top);
    for parent in ["NotAllowedToStart", "AllowedToStart"] {
        for (name, number) in [("Waiting", 1), ("Ready", 2), ("Loaded", 3)] {
            assert!(
                states.contains(&(Some(parent), name, number)),
                "{parent}/{name}"
            );
        }
    }
    for (parent, name, number) in [
        ("Interrupted", "Held", 1),
        ("Interrupted", "Suspended", 2),
        ("Ended", "Completed", 1),
        ("Ended", "Closed", 2),
    ] {
        assert!(
            states.contains(&(Some(parent), name, number)),
            "{parent}/{name}"
        );
    }
    assert_eq!(states.len(), 6 + 3 + 3 + 2 + 2);
}

#[test]
fn fixture_machine_follows_references_declared_on_either_end() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let output = Generator::new()
        .nodeset(fixtures.join("mini.nodeset2.xml"))
        .nullable_field("MiniItemDataType", "Path")
        .generate();
    let machines = match output {
        Ok(output) => output.state_machines,
        Err(error) => panic!("{error}"),
    };
    let mini = machine(&machines, "MiniMachineType");
    let rows = generated_rows(mini);
    let expected: Vec<Row> = vec![
        (
            None,
            "FromIdleToBusy".into(),
            1,
            "Idle".into(),
            "Busy".into(),
            BTreeSet::from(["Run".to_owned()]),
        ),
        (
            None,
            "FromBusyToIdle".into(),
            2,
            "Busy".into(),
            "Idle".into(),
            BTreeSet::new(),
        ),
        (
            Some("Busy".into()),
            "FromWorkingToPausing".into(),
            1,
            "Working".into(),
            "Pausing".into(),
            BTreeSet::new(),
        ),
    ];
    assert_eq!(rows, expected);
    assert_eq!(mini.transitions[0].effects, ["MiniEventType"]);
}
