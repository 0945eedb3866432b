"""A merge aid for issue 17 (delete it once the parallel branches are merged): rewrites imports,
dotted module names and pipeline/<module>.py paths of code written against the flat layout to
the folders (docs/development.md, "Where each module went"). Idempotent. Run it only on the files
a branch changed, then read the diff: a bare `pipeline/cli/` folder reference is ambiguous.

Usage: python3 tools/issue17_relayout.py FILE...   (no args: every tracked file of the cwd repo)
"""
import re
import subprocess
import sys
from pathlib import Path

MAP = {
    "tuples": "core/tuples", "timestamps": "core/timestamps", "windows": "core/windows", "state": "core/state",
    "outputs": "core/facts", "catalog": "core/catalog", "pricing": "core/pricing", "quota": "core/quota", "keys": "core/keys",
    "settlement": "core/settlement", "records": "core/records", "validation": "core/validation", "fold": "core/fold",
    "control": "core/control", "reasons": "core/reasons", "column_ranges": "core/column_ranges", "usage_decoder": "core/usage_decoder",
    "processor": "batch/processor", "outputs_json": "batch/topic_json", "framing": "batch/framing", "columns": "batch/columns",
    "publish": "ingest/publish", "topics": "ingest/topics", "broker": "ingest/broker", "kafka_security": "ingest/kafka_security",
    "app": "stream/app", "rawbatches": "stream/rawbatches", "batching": "stream/batching", "isolation": "stream/isolation",
    "gcpause": "stream/gcpause", "logidentity": "stream/logidentity", "delivery": "stream/delivery",
    "partitioning": "stream/partitioning", "rebill": "stream/rebill", "chclient": "store/chclient", "chcluster": "store/chcluster",
    "sink": "store/sink", "statestore": "store/statestore", "migrations": "store/migrations", "queries": "store/queries",
    "sqlquery": "store/sqlquery", "reader": "store/reader", "api": "serve/api", "metrics": "serve/metrics",
    "cli": "cli/commands", "output": "cli/tables", "progress": "cli/progress", "workload": "demo/workload",
    "console": "serve/console",
}
# tests/unit mirrors the folders
TESTS = {
    "test_catalog": "core/test_catalog",
    "test_duplicates": "core/test_duplicates",
    "test_facts": "core/test_facts",
    "test_fold": "core/test_fold",
    "test_fold_properties": "core/test_fold_properties",
    "test_gateway_shapes": "core/test_gateway_shapes",
    "test_hostile": "core/test_hostile",
    "test_instants": "core/test_instants",
    "test_keys": "core/test_keys",
    "test_oracle_settlement": "core/test_oracle_settlement",
    "test_oracle_smoke": "core/test_oracle_smoke",
    "test_pricing": "core/test_pricing",
    "test_quota": "core/test_quota",
    "test_rate_windows": "core/test_rate_windows",
    "test_reasons": "core/test_reasons",
    "test_records": "core/test_records",
    "test_rejections": "core/test_rejections",
    "test_settlement": "core/test_settlement",
    "test_settlement_vs_oracle": "core/test_settlement_vs_oracle",
    "test_state": "core/test_state",
    "test_timestamps": "core/test_timestamps",
    "test_usage_decoder": "core/test_usage_decoder",
    "test_windows": "core/test_windows",
    "test_units": "batch/test_units",
    "test_outputs_json": "batch/test_topic_json",
    "test_batching": "stream/test_batching",
    "test_rebill_refused": "stream/test_rebill_refused",
    "test_cluster_settings": "stream/test_cluster_settings",
    "test_publish": "ingest/test_publish",
    "test_sqlquery": "store/test_sqlquery",
    "test_metrics": "serve/test_metrics",
    "test_output": "cli/test_tables",
    "test_progress": "cli/test_progress",
    "test_settings": "cli/test_settings",
    "test_secrets": "cli/test_secrets",
    "test_workload": "demo/test_workload",
}
tests_dotted = re.compile(r"\btests\.unit\.(" + "|".join(sorted(TESTS, key=len, reverse=True)) + r")\b")
tests_slashed = re.compile(r"\btests/unit/(" + "|".join(sorted(TESTS, key=len, reverse=True)) + r")\.py\b")
NEW_CLI = r"(?!\.(?:commands|tables|progress)\b)(?!/(?:commands|tables|progress)\b|/__init__)(?![ \t]+import[ \t]+(?:commands|tables|progress)\b)"
names = "|".join(sorted(MAP, key=len, reverse=True))
dotted = re.compile(r"(?<![\w.])pipeline\.(" + names + r")\b" + NEW_CLI + r"(?![/\w])")
slashed = re.compile(r"(?<![\w/])pipeline/(" + names + r")\b" + NEW_CLI + r"(\.py\b|/|\b)")
from_pkg = re.compile(r"^([ \t]*)from pipeline import ([^\n#(]+?)([ \t]*(#.*)?)$", re.M)


def fix_from(text: str) -> str:
    renames = {}

    def repl(m):
        indent, items, tail = m.group(1), m.group(2), m.group(3)
        keep, groups = [], {}
        for item in [i.strip() for i in items.split(",") if i.strip()]:
            base = item.split(" as ")[0].strip()
            if base in MAP:
                pkg, mod = MAP[base].rsplit("/", 1)
                alias = item.split(" as ")[1].strip() if " as " in item else None
                groups.setdefault(pkg.replace("/", "."), []).append(mod + (f" as {alias}" if alias else ""))
                if base != mod and not alias:
                    renames[base] = mod
            else:
                keep.append(item)
        lines = [f"{indent}from pipeline import {', '.join(keep)}"] if keep else []
        lines += [f"{indent}from pipeline.{pkg} import {', '.join(sorted(mods))}" for pkg, mods in sorted(groups.items())]
        if tail.strip():
            lines[0] += tail
        return "\n".join(lines)

    text = from_pkg.sub(repl, text)
    for old, new in renames.items():
        text = re.sub(r"(?<![\w.])" + old + r"\.(?=[A-Za-z_])", new + ".", text)
        text = re.sub(r"(setattr\()" + old + r"(\s*,)", r"\g<1>" + new + r"\2", text)
    return text


def rewrite(path: Path) -> bool:
    try:
        text = path.read_text()
    except (UnicodeDecodeError, OSError):
        return False
    new = dotted.sub(lambda m: "pipeline." + MAP[m.group(1)].replace("/", "."), text)
    new = slashed.sub(lambda m: "pipeline/" + MAP[m.group(1)] + m.group(2), new)
    new = tests_dotted.sub(lambda m: "tests.unit." + TESTS[m.group(1)].replace("/", "."), new)
    new = tests_slashed.sub(lambda m: "tests/unit/" + TESTS[m.group(1)] + ".py", new)
    if path.suffix == ".py":
        new = fix_from(new)
    if new != text:
        path.write_text(new)
        return True
    return False


if __name__ == "__main__":
    files = sys.argv[1:] or subprocess.run(["git", "ls-files"], capture_output=True, text=True).stdout.split()
    changed = [f for f in files if Path(f).is_file() and Path(f).suffix not in (".png", ".js", ".css", ".so") and rewrite(Path(f))]
    print("\n".join(changed))
