// Runs `breakwater <command>` as a real process from the TypeScript sources, so tests need no
// prior build, and collects its JSON log lines. The process runs an esbuild bundle of
// src/cli/main.ts made once per test file (the transform tsx applies, so the same code runs):
// started through tsx, each process compiled the CLI's modules again, about a second of CPU
// per process on CI, and a CLI test file starts dozens.
import { type ChildProcess, spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { compiledFixtureSync } from '../support/compiled-fixture.js'

const mainFile = fileURLToPath(new URL('../../src/cli/main.ts', import.meta.url))

/** The `node` arguments that start `breakwater` (before its own arguments). */
export function cliNodeArgs(): string[] {
  return [compiledFixtureSync(mainFile)]
}

/** A running (or finished) CLI process. */
export interface CliProcess {
  readonly child: ChildProcess
  /** Parsed JSON lines printed on stdout so far. */
  readonly lines: Record<string, unknown>[]
  /** Everything printed on stdout / stderr so far. */
  stdout(): string
  stderr(): string
  /** Resolves with the exit code (or the signal that ended it). */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
  /** Waits for a log line matching `match`; fails with the output after `timeoutMs`. */
  waitForLine(
    match: (line: Record<string, unknown>) => boolean,
    what: string,
    timeoutMs?: number,
  ): Promise<Record<string, unknown>>
  /** SIGKILLs it if it still runs. */
  kill(): void
}

const running = new Set<ChildProcess>()
process.once('exit', () => {
  for (const child of running) child.kill('SIGKILL')
})

/** Starts `breakwater ...args` with `env` added to this process's environment. */
export function spawnCli(args: readonly string[], env: Record<string, string> = {}): CliProcess {
  return spawnNode([...cliNodeArgs(), ...args], env)
}

/**
 * {@link spawnCli} through tsx on the sources themselves, for a process that loads a TypeScript
 * module importing src/ (`saga worker --module`): it must share the CLI's module instances
 * (a saga definition is known by identity), which a bundle of its own would not.
 */
export function spawnCliFromSources(
  args: readonly string[],
  env: Record<string, string> = {},
): CliProcess {
  return spawnNode(['--import', 'tsx', mainFile, ...args], env)
}

/**
 * Starts `node ...nodeArgs` (a breakwater entry point and its arguments) with `env` added, and
 * collects its JSON log lines. {@link spawnCli} runs the sources; the proxy's end-to-end tests
 * run the built package through this too.
 */
export function spawnNode(
  nodeArgs: readonly string[],
  env: Record<string, string> = {},
): CliProcess {
  const child = spawn(process.execPath, nodeArgs, {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  running.add(child)
  const lines: Record<string, unknown>[] = []
  let out = ''
  let err = ''
  let pending = ''
  const listeners = new Set<() => void>()
  child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
    out += chunk
    pending += chunk
    for (let nl = pending.indexOf('\n'); nl >= 0; nl = pending.indexOf('\n')) {
      const line = pending.slice(0, nl)
      pending = pending.slice(nl + 1)
      if (line.startsWith('{')) lines.push(JSON.parse(line) as Record<string, unknown>)
    }
    for (const wake of listeners) wake()
  })
  child.stderr!.setEncoding('utf8').on('data', (chunk: string) => {
    err += chunk
  })
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => {
      running.delete(child)
      for (const wake of listeners) wake()
      resolve({ code, signal })
    }),
  )
  const describe = (): string => `\nstdout:\n${out}\nstderr:\n${err}`
  return {
    child,
    lines,
    stdout: () => out,
    stderr: () => err,
    exited,
    async waitForLine(match, what, timeoutMs = 30_000) {
      const deadline = Date.now() + timeoutMs
      for (;;) {
        const found = lines.find(match)
        if (found !== undefined) return found
        if (child.exitCode !== null || child.signalCode !== null)
          throw new Error(`the process exited before ${what}${describe()}`)
        const left = deadline - Date.now()
        if (left <= 0) throw new Error(`timed out waiting for ${what}${describe()}`)
        await new Promise<void>((resolve) => {
          const timer = setTimeout(done, Math.min(left, 250))
          function done(): void {
            clearTimeout(timer)
            listeners.delete(done)
            resolve()
          }
          listeners.add(done)
        })
      }
    },
    kill() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
    },
  }
}

/** Runs `breakwater ...args` to the end. */
export async function runCli(
  args: readonly string[],
  env: Record<string, string> = {},
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const cli = spawnCli(args, env)
  const { code } = await cli.exited
  return { code, stdout: cli.stdout(), stderr: cli.stderr() }
}
