// SIGTERM (or Ctrl-C) in the first moments of `breakwater relay`, `saga worker` or `proxy`,
// while main.ts loads the command's modules: no handler was on until the command's own
// runUntilSignal, so Node's default action ended the process (143 in a shell), skipping the
// documented graceful stop (exit 0). main.ts now holds both signals from before it imports the
// command. The import is held by a loader hook (fixtures/hold-import.mjs) until the test has
// sent the signal: the moment is the test's, not a timing guess.
import { EventEmitter } from 'node:events'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, afterEach, describe, expect, it } from 'vitest'
import { holdSignals } from '../../src/cli/held-signals.js'
import { proxyCommand } from '../../src/cli/proxy.js'
import { relayCommand } from '../../src/cli/relay.js'
import { sagaWorkerCommand } from '../../src/cli/saga-worker.js'
import type { SignalTarget } from '../../src/process/index.js'
import { type CliProcess, cliNodeArgs, spawnNode } from '../process/cli-process.js'
import { startSilentServer } from '../support/silent-server.js'
import { captureLongRunning } from './captured.js'

const holdImport = fileURLToPath(new URL('./fixtures/hold-import.mjs', import.meta.url))
const mainFile = fileURLToPath(new URL('../../src/cli/main.ts', import.meta.url))
const sagaModule = fileURLToPath(new URL('./fixtures/hanging-sagas.ts', import.meta.url))
const dir = mkdtempSync(join(tmpdir(), 'bw-early-sigterm-'))
const cleanups: Array<() => unknown> = []
afterEach(async () => {
  for (const fn of cleanups.splice(0).reverse()) await fn()
})
afterAll(() => rmSync(dir, { recursive: true, force: true }))

/**
 * Starts `breakwater ...args` (`entry`: the node arguments that run main.ts) with the import of
 * `module` held, sends `signal` once it is, then lets the import go on.
 */
async function signalWhileLoading(
  entry: readonly string[],
  args: readonly string[],
  module: string,
  signal: NodeJS.Signals,
): Promise<CliProcess> {
  const release = join(dir, `release-${cleanups.length}-${module}`)
  const cli = spawnNode(['--import', holdImport, ...entry, ...args], {
    BREAKWATER_TEST_HOLD_IMPORT: module,
    BREAKWATER_TEST_RELEASE_FILE: release,
  })
  cleanups.push(() => cli.kill())
  await cli.waitForLine((l) => l.msg === 'test: import held', `the import of ${module}`)
  cli.child.kill(signal)
  writeFileSync(release, '')
  return cli
}

/** The command's own lines (the hook's is the test's). */
function ownLines(cli: CliProcess): Record<string, unknown>[] {
  return cli.lines.filter((l) => l.msg !== 'test: import held')
}

// Whether the signal reaches the process before or after the import goes on is the OS's to
// decide: either way the stop must be the graceful one (held, nothing is started; or taken by
// the command's own handler during its start, abandoning a connect to a server that never
// answers). Before, the process was killed by the signal.
describe('a signal while the command loads', () => {
  it('relay: SIGTERM stops it gracefully, exit 0', async () => {
    const silent = await startSilentServer()
    cleanups.push(() => silent.close())
    const url = `postgres://app:secret@127.0.0.1:${silent.port}/app`
    const cli = await signalWhileLoading(cliNodeArgs(), ['relay', '--db', url], 'relay', 'SIGTERM')
    expect(await cli.exited, cli.stdout() + cli.stderr()).toEqual({ code: 0, signal: null })
    expect(cli.stderr()).toBe('')
    expect(ownLines(cli)).toEqual([expect.objectContaining({ signal: 'SIGTERM' })])
  })

  it('saga worker: SIGINT stops it gracefully, exit 0', async () => {
    const silent = await startSilentServer()
    cleanups.push(() => silent.close())
    const url = `postgres://app:secret@127.0.0.1:${silent.port}/app`
    const cli = await signalWhileLoading(
      ['--import', 'tsx', mainFile],
      ['saga', 'worker', '--module', sagaModule, '--db', url],
      'saga-worker',
      'SIGINT',
    )
    expect(await cli.exited, cli.stdout() + cli.stderr()).toEqual({ code: 0, signal: null })
    expect(cli.stderr()).toBe('')
    expect(ownLines(cli)).toEqual([expect.objectContaining({ signal: 'SIGINT' })])
  })

  it('proxy: SIGTERM stops it gracefully, exit 0', async () => {
    const config = join(dir, 'proxy.yaml')
    writeFileSync(
      config,
      'services: { a: { endpoints: [http://127.0.0.1:9] } }\nlisteners: [{ name: out, role: ambassador, port: 0 }]\n',
    )
    const cli = await signalWhileLoading(
      cliNodeArgs(),
      ['proxy', '--config', config],
      'proxy',
      'SIGTERM',
    )
    expect(await cli.exited, cli.stdout() + cli.stderr()).toEqual({ code: 0, signal: null })
    expect(cli.stderr()).toBe('')
    expect(ownLines(cli).at(-1)).toEqual(expect.objectContaining({ signal: 'SIGTERM' }))
  })
})

describe('in process: the signals main.ts held', () => {
  // A database that cannot be opened: a start that ran would fail (exit 1), not stop.
  const db = () => `sqlite:${join(dir, 'none', 'missing.db')}`

  for (const [name, run] of [
    ['relay', relayCommand],
    ['saga worker', sagaWorkerCommand],
  ] as const)
    it(`${name}: one held before the command ran stops it with nothing started, exit 0`, async () => {
      const { lines, signals, stderr, deps } = captureLongRunning()
      const held = holdSignals(signals as unknown as SignalTarget)
      signals.emit('SIGINT', 'SIGINT')
      const args = name === 'relay' ? ['--db', db()] : ['--module', sagaModule, '--db', db()]
      expect(await run(args, { ...deps, held }), stderr()).toBe(0)
      expect(stderr()).toBe('')
      expect(lines).toEqual([
        expect.objectContaining({
          level: 'info',
          msg: `stopped by SIGINT before the ${name} started; nothing was started`,
          signal: 'SIGINT',
        }),
      ])
      for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP'])
        expect(signals.listenerCount(signal), signal).toBe(0)
    })

  it("relay: none held: handed over to the relay's own handlers as it starts", async () => {
    const { lines, signals, deps } = captureLongRunning()
    const held = holdSignals(signals as unknown as SignalTarget)
    const run = relayCommand(['--db', db()], { ...deps, held })
    // In the same turn: runUntilSignal's listeners are on, the holder's are off.
    expect(signals.listenerCount('SIGTERM')).toBe(1)
    expect(signals.listenerCount('SIGINT')).toBe(1)
    expect(held.signal.aborted).toBe(false)
    expect(await run).toBe(1)
    expect(lines.filter((l) => String(l.msg).startsWith('stopped by'))).toEqual([])
  })

  it('proxy --check: gives the signals their default action back (no graceful stop)', async () => {
    const signals = new EventEmitter()
    const held = holdSignals(signals as unknown as SignalTarget)
    const config = join(dir, 'check.yaml')
    writeFileSync(
      config,
      'services: { a: { endpoints: [http://127.0.0.1:9] } }\nlisteners: [{ name: out, role: ambassador, port: 0 }]\n',
    )
    let out = ''
    const run = proxyCommand(['--config', config, '--check'], {
      stdout: { write: (t: string) => (out += t) } as never,
      signals: signals as unknown as SignalTarget,
      held,
    })
    expect(signals.listenerCount('SIGTERM')).toBe(0)
    expect(await run).toBe(0)
    expect(out).toContain('valid')
  })

  it('proxy: one held before the command ran stops it with nothing started, exit 0', async () => {
    const signals = new EventEmitter()
    const held = holdSignals(signals as unknown as SignalTarget)
    signals.emit('SIGTERM', 'SIGTERM')
    const config = join(dir, 'held.yaml')
    writeFileSync(
      config,
      'services: { a: { endpoints: [http://127.0.0.1:9] } }\nlisteners: [{ name: out, role: ambassador, port: 0 }]\n',
    )
    let out = ''
    const code = await proxyCommand(['--config', config], {
      stdout: { write: (t: string) => (out += t) } as never,
      signals: signals as unknown as SignalTarget,
      held,
    })
    expect(code).toBe(0)
    const messages = out
      .trim()
      .split('\n')
      .map((l) => (JSON.parse(l) as { msg: string }).msg)
    expect(messages).toEqual([
      'stopped by SIGTERM before the proxy started; nothing was started',
      'proxy exited',
    ])
    for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP'])
      expect(signals.listenerCount(signal), signal).toBe(0)
  })
})
