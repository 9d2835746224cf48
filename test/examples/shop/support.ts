// Running the shop demo from tests: the real `breakwater demo` command in its own process (the
// CLI from source through tsx; the shop itself compiled to dist/examples/shop, built here when
// its sources are newer), with its summary read back as JSON.
import { spawn, spawnSync } from 'node:child_process'
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { ChaosAction } from '../../../examples/shop/chaos.js'
import type { ShopDemoResult } from '../../../examples/shop/main.js'
import type { Snapshot } from '../../../examples/shop/monitor.js'
import { until } from '../../support/until.js'

export const repoRoot = fileURLToPath(new URL('../../../', import.meta.url))

function newestMtime(dir: string): number {
  let newest = 0
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name)
    newest = Math.max(newest, entry.isDirectory() ? newestMtime(path) : statSync(path).mtimeMs)
  }
  return newest
}

function mtimeOf(path: string): number {
  try {
    return statSync(path).mtimeMs
  } catch {
    return 0
  }
}

function tsc(project: string): void {
  // tsc emits even when files that are not the shop's have type errors (others' work in
  // progress); the check that matters is that the output exists afterwards.
  spawnSync(process.execPath, [join(repoRoot, 'node_modules/typescript/bin/tsc'), '-p', project], {
    cwd: repoRoot,
    stdio: 'ignore',
  })
}

// Test files run in parallel workers: one builds while the others wait for its lock (a
// directory: mkdir is atomic), so no worker imports a half-written file.
function withBuildLock(build: () => void): void {
  const lock = join(repoRoot, 'dist/.shop-build-lock')
  const pause = new Int32Array(new SharedArrayBuffer(4))
  for (let waited = 0; ; waited += 200) {
    try {
      mkdirSync(lock, { recursive: false })
      break
    } catch {
      // A lock older than two minutes was left by a killed run.
      if (waited > 120_000 || Date.now() - mtimeOf(lock) > 120_000) {
        rmSync(lock, { recursive: true, force: true })
        continue
      }
      Atomics.wait(pause, 0, 0, 200)
    }
  }
  try {
    build()
  } finally {
    rmSync(lock, { recursive: true, force: true })
  }
}

/** Builds the library (when its proxy runtime is missing) and the shop (when stale). */
export function ensureShopBuilt(): void {
  mkdirSync(join(repoRoot, 'dist'), { recursive: true })
  withBuildLock(buildIfStale)
}

function buildIfStale(): void {
  let proxyIndex = ''
  try {
    proxyIndex = readFileSync(join(repoRoot, 'dist/proxy/index.js'), 'utf8')
  } catch {}
  if (!proxyIndex.includes('startProxy')) tsc('tsconfig.build.json')
  const main = join(repoRoot, 'dist/examples/shop/main.js')
  if (mtimeOf(main) < newestMtime(join(repoRoot, 'examples/shop'))) tsc('tsconfig.examples.json')
  if (mtimeOf(main) === 0)
    throw new Error('the shop did not build (npx tsc -p tsconfig.examples.json)')
}

/** The summary `breakwater demo --json` writes: the shop's own result, as JSON. */
export type ShopSummary = ShopDemoResult

/** A running `breakwater demo` process. */
export interface DemoRun {
  /** Resolves with the first stdout line matching `pattern`. */
  line(pattern: RegExp): Promise<string>
  /** Resolves when the process exits, with its exit code, output and summary. */
  readonly done: Promise<{
    code: number | null
    stdout: string
    stderr: string
    summary: ShopSummary | undefined
  }>
  /**
   * Asks it to stop (SIGTERM, or `signal`: it stops the load, settles and prints the summary; a
   * second one stops waiting for the settle).
   */
  stop(signal?: NodeJS.Signals): void
}

/** Starts `breakwater demo <args> --json <file> --port 0` (with `env` added to its environment). */
export function startDemo(args: readonly string[], env: NodeJS.ProcessEnv = {}): DemoRun {
  const dir = mkdtempSync(join(tmpdir(), 'breakwater-shop-test-'))
  const json = join(dir, 'summary.json')
  const child = spawn(
    process.execPath,
    [
      '--import',
      'tsx',
      join(repoRoot, 'src/cli/main.ts'),
      'demo',
      ...args,
      '--port',
      '0',
      '--json',
      json,
    ],
    { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } },
  )
  let stdout = ''
  let stderr = ''
  const waiters: { pattern: RegExp; resolve: (line: string) => void }[] = []
  child.stdout.on('data', (chunk: Buffer) => {
    stdout += chunk.toString()
    for (const waiter of [...waiters]) {
      const line = stdout.split('\n').find((l) => waiter.pattern.test(l))
      if (line !== undefined) {
        waiters.splice(waiters.indexOf(waiter), 1)
        waiter.resolve(line)
      }
    }
  })
  child.stderr.on('data', (chunk: Buffer) => {
    stderr += chunk.toString()
  })
  const done = new Promise<{
    code: number | null
    stdout: string
    stderr: string
    summary: ShopSummary | undefined
  }>((resolve) => {
    child.once('exit', (code) => {
      let summary: ShopSummary | undefined
      try {
        summary = JSON.parse(readFileSync(json, 'utf8')) as ShopSummary
      } catch {}
      rmSync(dir, { recursive: true, force: true })
      for (const waiter of waiters) waiter.resolve('')
      resolve({ code, stdout, stderr, summary })
    })
  })
  return {
    line: (pattern) =>
      new Promise((resolve) => {
        const line = stdout.split('\n').find((l) => pattern.test(l))
        if (line !== undefined) resolve(line)
        else waiters.push({ pattern, resolve })
      }),
    done,
    stop: (signal = 'SIGTERM') => child.kill(signal),
  }
}

/** Asserts-friendly view of a summary's invariants: name -> ok. */
export function invariantsOf(summary: ShopSummary): Record<string, boolean> {
  return Object.fromEntries(summary.invariants.map((i) => [i.name, i.ok]))
}

/** The dashboard's URL, from the line the demo prints once it is up. */
export async function dashboardOf(run: DemoRun): Promise<string> {
  const line = await run.line(/^dashboard: http/)
  const url = /http:\/\/\S+/.exec(line)?.[0]
  if (url === undefined) {
    // It ended first (waiters get ''): say how, or the failure names no cause.
    const { code, stdout, stderr } = await run.done
    throw new Error(
      `the demo ended (exit ${code}) before printing its dashboard URL\n${stdout.slice(-2_000)}\n${stderr.slice(-2_000)}`,
    )
  }
  return url.replace(/\/$/, '')
}

/** Applies a chaos action through the dashboard's API, as its buttons do. */
export async function applyChaosVia(dashboard: string, action: ChaosAction): Promise<void> {
  const res = await fetch(`${dashboard}/api/chaos`, {
    method: 'POST',
    body: JSON.stringify(action),
  })
  if (!res.ok) throw new Error(`chaos ${JSON.stringify(action)}: ${res.status} ${await res.text()}`)
}

/** The dashboard's current snapshot. */
export async function snapshotOf(dashboard: string): Promise<Snapshot> {
  const res = await fetch(`${dashboard}/api/state`)
  if (!res.ok) throw new Error(`GET /api/state: ${res.status}`)
  return (await res.json()) as Snapshot
}

/**
 * Runs the demo (with `extraArgs`, e.g. `--break inbox`) under lost replies: payments loses
 * half of its replies after charging and notifications half of its acknowledgements after
 * sending the email. Rather than hoping a timed script lands its faults (a loaded machine can
 * finish its orders after the script calmed things), it waits until `enough(patterns)` says
 * the faults that matter happened, then stops the demo (which calms everything, settles,
 * including the redeliveries still owed, and judges) and returns its result.
 */
export async function runUnderLostReplies(
  extraArgs: readonly string[],
  enough: (patterns: Snapshot['patterns']) => boolean,
): Promise<Awaited<DemoRun['done']>> {
  const run = startDemo([
    '--duration',
    '0',
    '--chaos',
    'none',
    '--rate',
    '6',
    '--quiet',
    ...extraArgs,
  ])
  try {
    const dashboard = await dashboardOf(run)
    for (const target of ['payments', 'notifications'] as const)
      await applyChaosVia(dashboard, { kind: 'fail', target, lostReplyRate: 0.5 })
    let last: Snapshot['patterns'] | undefined
    await until(
      async () => {
        last = (await snapshotOf(dashboard)).patterns
        return enough(last)
      },
      'the lost replies to happen',
      60_000,
      250,
    ).catch((error: unknown) => {
      throw new Error(`${String(error)}; patterns so far: ${JSON.stringify(last)}`)
    })
  } finally {
    run.stop()
  }
  return run.done
}
