// Judges a conformance results directory: every expected scenario must have run and ended with
// 0 FAILURE and 0 WARNING checks. Prints one line per scenario and a closing count.
// Usage: node check-results.mjs RESULTS_DIR SCENARIO...
import { readdirSync, readFileSync, existsSync } from "node:fs";
import { join } from "node:path";

const [dir, ...expected] = process.argv.slice(2);
const found = new Map(); // scenario -> checks of its newest run
const scenarioOf = (run) => run.replace(/-\d{4}-\d{2}-\d{2}T.*$/, "");
// Scenarios with a group (`auth/iss-supported`) are saved as DIR/auth/<name>-<time>/, those
// without one (`request-metadata`) as DIR/<name>-<time>/.
for (const entry of readdirSync(dir, { withFileTypes: true }).filter((d) => d.isDirectory()).sort((a, b) => a.name.localeCompare(b.name))) {
  const direct = join(dir, entry.name, "checks.json");
  if (existsSync(direct)) {
    found.set(scenarioOf(entry.name), JSON.parse(readFileSync(direct, "utf8")));
    continue;
  }
  for (const run of readdirSync(join(dir, entry.name)).sort()) {
    const file = join(dir, entry.name, run, "checks.json");
    if (!existsSync(file)) continue;
    found.set(`${entry.name}/${scenarioOf(run)}`, JSON.parse(readFileSync(file, "utf8")));
  }
}
let failed = 0;
for (const scenario of expected) {
  const checks = found.get(scenario);
  if (!checks) {
    failed++;
    console.log(`FAIL ${scenario}: did not run`);
    continue;
  }
  const bad = checks.filter((c) => c.status === "FAILURE" || c.status === "WARNING");
  const ok = checks.filter((c) => c.status === "SUCCESS").length;
  if (bad.length > 0) {
    failed++;
    console.log(`FAIL ${scenario}: ${bad.map((c) => `${c.status} ${c.id}: ${c.description}${c.errorMessage ? ` (${c.errorMessage})` : ""}`).join("; ")}`);
  } else if (ok === 0) {
    failed++;
    console.log(`FAIL ${scenario}: no successful check`);
  } else {
    console.log(`ok   ${scenario}: ${ok} checks`);
  }
}
console.log(`conformance: ${expected.length - failed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
