#!/usr/bin/env python3
"""What a rotation costs: re-dealing a version with 100 secrets as custodians are removed.

Starts a 2-of-5 cluster (`quorumvm dev --custodians 5 --threshold 2 --insecure-loopback`, in
a temporary directory), installs a version with 100 secret weights, then removes custodian 5
(2-of-4) and custodian 4 (2-of-3) with `quorumvm custodian remove` as two operators each, and
refreshes the shares of the 2-of-3 left (`quorumvm reshare`) for comparison. Prints the time
each took, as the coordinator measured it (from the k-th approval to the last commit).

    cargo build --release -p quorumvm-cli && python3 scripts/rotation-bench.py [BINARY]
"""
import json
import subprocess
import sys
import tempfile
import time
import tomllib

BINARY = sys.argv[1] if len(sys.argv) > 1 else "target/release/quorumvm"


def run(*args):
    p = subprocess.run([BINARY, *args], capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"quorumvm {' '.join(args[:2])} failed: {p.stderr}")
    return p.stdout


def main(d):
    run("dev", "--init-only", "--dir", d, "--port", "0", "--custodians", "5",
        "--threshold", "2", "--insecure-loopback")
    config = tomllib.load(open(f"{d}/coordinator.toml", "rb"))
    coordinator = f"http://{config['listen']}"
    own = {c["index"]: c["url"] for c in config["custodians"]}
    dev = subprocess.Popen([BINARY, "dev", "--dir", d], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        time.sleep(3)
        lines = ["program hundred", "version 1", "policy budget 1000000000",
                 "policy rate 1000000 per second"]
        for i in range(1, 101):
            lines += [f"input f{i} in 0..1000", f"secret w{i} in -10..10 scale 2"]
        weights = " ".join(f"w{i}" for i in range(1, 101))
        features = " ".join(f"f{i}" for i in range(1, 101))
        lines += [f"dot s = [{weights}] [{features}]", "output s"]
        with open(f"{d}/hundred.qvm", "w") as f:
            f.write("\n".join(lines) + "\n")
        run("compile", f"{d}/hundred.qvm", "-o", f"{d}/hundred.wasm")
        run("sign", f"{d}/hundred.wasm", "--key", f"{d}/publisher/publisher.key")
        install = ["install", f"{d}/hundred.wasm", "--key", f"{d}/publisher/publisher.key",
                   "--json", "--coordinator", coordinator]
        for i in range(1, 101):
            install += ["--secret", f"w{i}={i % 9}.{(i * 7) % 100:02}"]
        package = json.loads(run(*install))["package_id"]

        def operator(i):
            return ["--key", f"{d}/operators/custodian-{i}.key", "--coordinator", coordinator,
                    "--json"]

        for i in (1, 2):
            run("approve", package, *operator(i))
        time.sleep(3)
        for index, approvers in [(5, (1, 2)), (4, (1, 3))]:
            for i in approvers:
                state = json.loads(run("custodian", "remove", str(index), "--threshold", "2",
                                       "--custodian", own[i], *operator(i)))
            r = state["rotation"]
            print(f"rotation removing custodian {index} (to {r['threshold']}-of-"
                  f"{len(r['members'])}), 100 secrets: {r['ms']} ms")
            time.sleep(2)
        r = json.loads(run("reshare", "--config", f"{d}/coordinator.toml", "--json"))
        print(f"refresh of the same {r['secrets']} secrets on the 2-of-3 left: {r['ms']} ms")
    finally:
        dev.terminate()
        dev.wait()


with tempfile.TemporaryDirectory() as directory:
    main(directory)
