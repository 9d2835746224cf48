// Stopping the demo: the first signal stops the load and lets the system settle before judging
// it; an impatient second one (Ctrl-C twice) must still end it cleanly, with every service
// stopped and the temporary folder of SQLite files removed, not kill it where it stands.
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as delay } from 'node:timers/promises'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  applyChaosVia,
  type DemoRun,
  dashboardOf,
  ensureShopBuilt,
  repoRoot,
  startDemo,
} from './support.js'

let temp: string

beforeAll(() => {
  ensureShopBuilt()
  temp = mkdtempSync(join(tmpdir(), 'breakwater-shop-shutdown-'))
})

// The processes whose environment names `folder` (the shop's services get their database URLs
// in it): what a run left behind.
function processesUsing(folder: string): number[] {
  return readdirSync('/proc')
    .filter((name) => /^\d+$/.test(name))
    .filter((pid) => {
      try {
        return readFileSync(`/proc/${pid}/environ`, 'utf8').includes(folder)
      } catch {
        return false
      }
    })
    .map(Number)
}

// Three signals one at a time (signals sent together may arrive as one), each sent once the
// demo answered the one before, within milliseconds of it.
async function stopThreeTimes(run: DemoRun): Promise<void> {
  run.stop()
  await run.line(/^stopping:/)
  run.stop()
  await run.line(/stopping without waiting/)
  run.stop()
}

// No temporary folder of the demo in `folder`, and no process left using it (polled briefly:
// a killed process is reaped by the kernel, not at once).
async function expectNothingLeftIn(folder: string): Promise<void> {
  expect(readdirSync(folder).filter((name) => name.startsWith('breakwater-shop-'))).toEqual([])
  for (let i = 0; i < 50 && processesUsing(folder).length > 0; i++) await delay(100)
  expect(processesUsing(folder)).toEqual([])
}

// The demo from sources with its temporary folder in `own` (through a shell that runs it as
// npm runs a script, `sh -c 'build && node ...'` with npm's environment, when `via` is
// 'shell'). `output` resolves
// to its stdout once the dashboard is up, `ended` to all of it once it ends (the demo's, also
// through the shell: the shell's own end does not close it).
function spawnUntilDashboard(own: string, args: readonly string[], via?: 'shell') {
  const node = [process.execPath, '--import', 'tsx', join(repoRoot, 'src/cli/main.ts'), 'demo']
  const [command, ...rest] =
    via === 'shell' ? ['sh', '-c', 'true && "$@"', 'sh', ...node, ...args] : [...node, ...args]
  const child = spawn(command!, rest, {
    cwd: repoRoot,
    stdio: ['ignore', 'pipe', 'inherit'],
    // npm names the script it runs in npm_lifecycle_event (the demo watches its parent then).
    env: {
      ...process.env,
      TMPDIR: own,
      ...(via === 'shell' ? { npm_lifecycle_event: 'start' } : {}),
    },
  })
  let stdout = ''
  const exited = once(child, 'exit') as Promise<[number | null]>
  const output = new Promise<string>((resolve) => {
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
      stdout += chunk
      if (/^dashboard:/m.test(stdout)) resolve(stdout)
    })
  })
  const ended = new Promise<string>((resolve) => {
    child.stdout.once('close', () => resolve(stdout))
  })
  return { child, exited, output, ended }
}

afterAll(() => {
  if (temp !== undefined) rmSync(temp, { recursive: true, force: true })
})

describe('stopping the shop demo', () => {
  it('a second signal during the settle stops it at once, cleaning up', async () => {
    // The demo's own temporary folder goes inside `temp`, where the test can see it.
    const run = startDemo(['--duration', '0', '--chaos', 'none', '--rate', '5'], {
      TMPDIR: temp,
    })
    const dashboard = await dashboardOf(run)
    expect(readdirSync(temp).some((name) => name.startsWith('breakwater-shop-'))).toBe(true)
    // A process down: the end restarts it, so the second signal lands while the demo settles.
    await applyChaosVia(dashboard, { kind: 'down', target: 'notifications' })
    run.stop()
    await run.line(/load stops/)
    run.stop()
    const { code, stdout, stderr, summary } = await run.done
    // It ended by itself (an exit code, not the signal) and still judged what it found.
    expect(code, `${stdout}\n${stderr}`).not.toBeNull()
    expect(summary, stdout).toBeDefined()
    expect(stdout).toMatch(/stopping without waiting/)
    expect(readdirSync(temp).filter((name) => name.startsWith('breakwater-shop-'))).toEqual([])
  }, 120_000)

  // A closed terminal (or an ssh session that dropped) sends SIGHUP: its default action ended
  // the demo where it stood, its nine processes and temporary SQLite files left behind.
  it('a SIGHUP stops it as SIGTERM does, killing its processes and removing its files', async () => {
    const own = mkdtempSync(join(temp, 'hup-'))
    const run = startDemo(['--duration', '0', '--chaos', 'none', '--rate', '5'], { TMPDIR: own })
    await dashboardOf(run)
    expect(processesUsing(own).length).toBeGreaterThan(0)
    run.stop('SIGHUP')
    const { code, stdout, stderr, summary } = await run.done
    expect(code, `${stdout}\n${stderr}`).not.toBeNull()
    expect(stdout).toMatch(/^stopping:/m)
    expect(summary, stdout).toBeDefined()
    await expectNothingLeftIn(own)
  }, 120_000)

  it('a third signal ends it where it stands, still killing its processes and removing its files', async () => {
    const own = mkdtempSync(join(temp, 'third-'))
    const run = startDemo(['--duration', '0', '--chaos', 'none', '--rate', '5'], { TMPDIR: own })
    await dashboardOf(run)
    expect(processesUsing(own).length).toBeGreaterThan(0)
    // The third lands while the demo judges or cleans up, as an impatient user's would.
    await stopThreeTimes(run)
    const { code, stdout, stderr } = await run.done
    expect(code, `${stdout}\n${stderr}`).toBe(130)
    expect(stdout).toMatch(/stopped at once/)
    await expectNothingLeftIn(own)
  }, 120_000)

  // `npm start | head`, `| less` quit early, a `tee` that died: the CLI ends a command whose
  // reader went away with exit 141 (process.exit), and the demo's nine processes and its
  // temporary SQLite folder were left behind (the services exit by themselves, the folder
  // stayed).
  it('a reader of its output that goes away ends it (141), still removing its files', async () => {
    const own = mkdtempSync(join(temp, 'reader-'))
    const { child, exited, output } = spawnUntilDashboard(own, ['--port', '0'])
    const stdout = await output
    child.stdout.destroy()
    expect(processesUsing(own).length).toBeGreaterThan(0)
    // The next live line (chaos starts within seconds) fails with EPIPE.
    const [code] = await exited
    expect(code, stdout).toBe(141)
    await expectNothingLeftIn(own)
  }, 120_000)

  // `npm start` stopped by SIGTERM (`timeout`, a supervisor): npm passes it on to the shell
  // that runs the script (`npm run build && node ... demo`), which ends by it without passing
  // it on. The demo, re-parented, ran on with its nine processes, nobody left to stop it.
  it('stops as on a signal when the process that started it is gone', async () => {
    const own = mkdtempSync(join(temp, 'parent-'))
    const { child, output, ended } = spawnUntilDashboard(
      own,
      ['--duration', '0', '--chaos', 'none', '--port', '0'],
      'shell',
    )
    await output
    expect(processesUsing(own).length).toBeGreaterThan(0)
    child.kill('SIGTERM')
    const stdout = await ended
    expect(stdout).toMatch(/^stopping: the process that started the demo is gone/m)
    expect(stdout).toMatch(/^All invariants held\.$/m)
    await expectNothingLeftIn(own)
  }, 120_000)

  it('a third signal during the start-up still kills what started and removes its files', async () => {
    const own = mkdtempSync(join(temp, 'start-'))
    const run = startDemo(['--duration', '0', '--chaos', 'none', '--rate', '5'], { TMPDIR: own })
    await run.line(/starting 9 processes/)
    // All three within milliseconds, while the start (stores, proxy, nine processes) takes
    // seconds.
    await stopThreeTimes(run)
    const { code, stdout, stderr } = await run.done
    expect(code, `${stdout}\n${stderr}`).toBe(130)
    // The signals did land during the start: the dashboard, printed once it is over, never was.
    expect(stdout).not.toMatch(/^dashboard:/m)
    await expectNothingLeftIn(own)
  }, 120_000)
})
