// A SIGHUP in the first moments of `breakwater relay`, `saga worker` or `proxy`, while main.ts
// loads the command's modules: none of the commands' own SIGHUP handlers was on yet, so SIGHUP's
// default action ended the process (129 in a shell), although each of them takes SIGHUP once it
// runs (relay and saga worker log and ignore it, the proxy reloads). main.ts now holds SIGHUP
// with SIGTERM and SIGINT, and the command takes over one that came. A command that does not
// handle SIGHUP (`--help`, the demo) gets its default action back. The import is held by a
// loader hook (fixtures/hold-import.mjs) until the test has sent the signal.
import { EventEmitter } from 'node:events'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, afterEach, describe, expect, it } from 'vitest'
import { holdSignals } from '../../src/cli/held-signals.js'
import { relayCommand } from '../../src/cli/relay.js'
import type { SignalTarget } from '../../src/process/index.js'
import { type CliProcess, cliNodeArgs, spawnNode } from '../process/cli-process.js'
import { startSilentServer } from '../support/silent-server.js'
import { captureLongRunning } from './captured.js'

const holdImport = fileURLToPath(new URL('./fixtures/hold-import.mjs', import.meta.url))
const dir = mkdtempSync(join(tmpdir(), 'bw-early-sighup-'))
const cleanups: Array<() => unknown> = []
afterEach(async () => {
  for (const fn of cleanups.splice(0).reverse()) await fn()
})
afterAll(() => rmSync(dir, { recursive: true, force: true }))

/** Starts `breakwater ...args` with the import of `module` held, sends SIGHUP, lets it go on. */
async function hangUpWhileLoading(args: readonly string[], module: string): Promise<CliProcess> {
  const release = join(dir, `release-${cleanups.length}-${module}`)
  const cli = spawnNode(['--import', holdImport, ...cliNodeArgs(), ...args], {
    BREAKWATER_TEST_HOLD_IMPORT: module,
    BREAKWATER_TEST_RELEASE_FILE: release,
  })
  cleanups.push(() => cli.kill())
  await cli.waitForLine((l) => l.msg === 'test: import held', `the import of ${module}`)
  cli.child.kill('SIGHUP')
  writeFileSync(release, '')
  return cli
}

describe('a SIGHUP while the command loads', () => {
  it('relay: is ignored as once started; SIGTERM then stops it, exit 0', async () => {
    const silent = await startSilentServer()
    cleanups.push(() => silent.close())
    const url = `postgres://app:secret@127.0.0.1:${silent.port}/app`
    const cli = await hangUpWhileLoading(['relay', '--db', url], 'relay')
    await cli.waitForLine(
      (l) => typeof l.msg === 'string' && l.msg.startsWith('SIGHUP ignored'),
      'the SIGHUP to be logged',
    )
    expect(cli.child.exitCode).toBeNull()
    cli.child.kill('SIGTERM')
    expect(await cli.exited, cli.stdout() + cli.stderr()).toEqual({ code: 0, signal: null })
  })

  it('proxy: is applied as a reload once started', async () => {
    const config = join(dir, 'proxy.yaml')
    writeFileSync(
      config,
      'services: { a: { endpoints: [http://127.0.0.1:9] } }\nlisteners: [{ name: out, role: ambassador, port: 0 }]\ndrainTimeoutMs: 1000\n',
    )
    const cli = await hangUpWhileLoading(['proxy', '--config', config], 'proxy')
    await cli.waitForLine((l) => l.msg === 'config reloaded', 'the reload asked while loading')
    const messages = cli.lines.map((l) => l.msg)
    expect(messages.indexOf('proxy started')).toBeLessThan(messages.indexOf('config reloaded'))
    cli.child.kill('SIGTERM')
    expect(await cli.exited, cli.stdout() + cli.stderr()).toEqual({ code: 0, signal: null })
  })

  it('relay --help: gets its default action back (as before main.ts held it)', async () => {
    const cli = await hangUpWhileLoading(['relay', '--help'], 'relay')
    expect(await cli.exited).toEqual({ code: null, signal: 'SIGHUP' })
  })
})

describe('in process: a SIGHUP main.ts held', () => {
  it('is not a stop: held.signal stays unaborted, and it is taken over once', () => {
    const signals = new EventEmitter()
    const held = holdSignals(signals as unknown as SignalTarget)
    expect(signals.listenerCount('SIGHUP')).toBe(1)
    signals.emit('SIGHUP', 'SIGHUP')
    expect(held.signal.aborted).toBe(false)
    expect(held.takeHangup()).toBe(true)
    expect(signals.listenerCount('SIGHUP')).toBe(0)
    expect(held.takeHangup()).toBe(false)
    held.handOver()
    for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP'])
      expect(signals.listenerCount(signal), signal).toBe(0)
  })

  it("relay: one held is logged as ignored once the relay's handler is on", async () => {
    const { lines, signals, deps } = captureLongRunning()
    const held = holdSignals(signals as unknown as SignalTarget)
    signals.emit('SIGHUP', 'SIGHUP')
    const db = `sqlite:${join(dir, 'none', 'missing.db')}`
    // A database that cannot be opened: the start fails (exit 1) after the SIGHUP was taken.
    expect(await relayCommand(['--db', db], { ...deps, held })).toBe(1)
    expect(lines[0]).toMatchObject({ level: 'info', signal: 'SIGHUP' })
    expect(String(lines[0]?.msg)).toMatch(/^SIGHUP ignored/)
    for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP'])
      expect(signals.listenerCount(signal), signal).toBe(0)
  })
})
