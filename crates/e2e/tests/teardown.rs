//! A test that fails still removes every container and network its stack
//! made, and the containers it started beside the stack on its network.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use e2e::Stack;

/// An image with `sleep` (the stack's own hold nothing but their programs).
const IMAGE: &str = "debian:trixie-slim";

/// `docker <args>`'s output lines, the command asserted to succeed.
fn docker_lines(args: &[&str]) -> Vec<String> {
    let out = Command::new("docker").args(args).output().expect("docker CLI");
    assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.is_empty()).map(str::to_owned).collect()
}

#[test]
fn a_stack_whose_test_panics_leaves_no_container_and_no_network() {
    let (tx, rx) = std::sync::mpsc::channel();
    let failed = std::thread::spawn(move || {
        let stack = Stack::new("teardown");
        stack.compose(&["up", "-d", "--wait", "consul"]);
        // Started beside the stack, on its network, with no guard of its own.
        let beside = format!("{}-beside", stack.project);
        let network = stack.network();
        docker_lines(&["run", "-d", "--name", &beside, "--network", &network, IMAGE, "sleep", "300"]);
        // Set up: what must go is there.
        tx.send((stack.project.clone(), network)).unwrap();
        panic!("the test fails with its stack up");
    })
    .join();
    assert!(failed.is_err(), "the test thread panicked");
    let (project, network) = rx.try_recv().expect("the stack and the container beside it were up before the panic");
    let left = docker_lines(&["ps", "-aq", "--filter", &format!("label=com.docker.compose.project={project}")]);
    assert!(left.is_empty(), "containers of {project} left: {left:?}");
    let beside = docker_lines(&["ps", "-aq", "--filter", &format!("name={project}-beside")]);
    assert!(beside.is_empty(), "containers beside {project} left: {beside:?}");
    let networks = docker_lines(&["network", "ls", "-q", "--filter", &format!("name={network}")]);
    assert!(networks.is_empty(), "network {network} left");
}
