#!/usr/bin/env node
// Runs the npm scripts named on the command line at the same time and fails if any fails:
// `node scripts/parallel.mjs test:vitest typecheck lint`. The first script's output is shown
// as it comes (the terminal is its own); the others' is kept and printed whole once all have
// ended, so that it never interleaves with the first's. Why: `npm test` type-checked and linted
// (30 s) before the tests started, while the tests' workers spend much of their time waiting
// for the servers and child processes they start; side by side, the checks fit in those waits.
import { spawn } from 'node:child_process'

const names = process.argv.slice(2)
if (names.length === 0) {
  process.stderr.write('usage: node scripts/parallel.mjs <npm script>...\n')
  process.exit(2)
}

const npmCli = process.env.npm_execpath
const running = new Set()

/**
 * Runs `npm run --silent <name>` (through the npm that runs us, when there is one) and resolves
 * to its exit code and, unless `live`, its output.
 */
function run(name, live) {
  const [command, args] =
    npmCli === undefined
      ? ['npm', ['run', '--silent', name]]
      : [process.execPath, [npmCli, 'run', '--silent', name]]
  return new Promise((resolve) => {
    const child = spawn(command, args, { stdio: live ? 'inherit' : ['ignore', 'pipe', 'pipe'] })
    running.add(child)
    const output = []
    child.stdout?.on('data', (chunk) => output.push(chunk))
    child.stderr?.on('data', (chunk) => output.push(chunk))
    child.on('error', (error) => {
      running.delete(child)
      resolve({ name, code: 1, output: [Buffer.from(`${error}\n`)] })
    })
    child.on('close', (code, signal) => {
      running.delete(child)
      resolve({ name, code, signal, output })
    })
  })
}

// A Ctrl-C reaches the whole process group by itself (handing SIGINT on as well would make it
// a second, impatient one); a SIGTERM or SIGHUP sent to this process alone (a supervisor's) is
// handed on, so that no script runs on without us. Each script then ends as it does on that
// signal (the tests stop their servers).
for (const signal of ['SIGTERM', 'SIGHUP']) {
  process.on(signal, () => {
    for (const child of running) child.kill(signal)
  })
}

const children = names.map((name, index) => run(name, index === 0))
const results = await Promise.all(children)
let failed = false
for (const { name, code, signal, output } of results) {
  if (output.length > 0) process.stdout.write(Buffer.concat(output))
  if (code !== 0) {
    failed = true
    process.stderr.write(`npm run ${name} failed (${signal ? signal : `exit code ${code}`})\n`)
  }
}
process.exit(failed ? 1 : 0)
