// SIGTERM (or Ctrl-C) in the first moments of `breakwater demo` (`npm start`), while it loads
// the shop's modules or checks that --db and --broker answer: no handler was installed until
// the shop itself started, so Node's default action ended the process with 143, the
// documented graceful stop skipped. The signals are now held from before the demo's modules
// load: one that comes before the shop starts ends the demo there, exit 0, nothing started.
import { EventEmitter } from 'node:events'
import { afterEach, beforeAll, describe, expect, it, vi } from 'vitest'
import { type DemoCommandDeps, demoCommand } from '../../src/cli/demo.js'
import type { SignalTarget } from '../../src/process/index.js'
import { ensureShopBuilt } from '../examples/shop/support.js'
import { spawnCliFromSources } from '../process/cli-process.js'
import { startSilentServer } from '../support/silent-server.js'

afterEach(() => {
  vi.restoreAllMocks()
})

function captureStdout(): () => string {
  let text = ''
  vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => {
    text += String(chunk)
    return true
  })
  return () => text
}

describe('breakwater demo: a signal before the shop starts', () => {
  it('is held from the call on; the shop is then not started, exit 0', async () => {
    const out = captureStdout()
    const signals = new EventEmitter()
    let loaded: () => void = () => {}
    const loading = new Promise<void>((resolve) => {
      loaded = resolve
    })
    const runs: unknown[] = []
    const deps: DemoCommandDeps = {
      signals: signals as unknown as SignalTarget,
      loadShop: async () => {
        await loading
        return async (options) => {
          runs.push(options)
          return { ok: true }
        }
      },
    }
    const run = demoCommand(['--quiet'], deps)
    // Synchronously after the call: nothing is loaded yet.
    expect(signals.listenerCount('SIGTERM')).toBe(1)
    expect(signals.listenerCount('SIGINT')).toBe(1)
    signals.emit('SIGTERM', 'SIGTERM')
    loaded()
    expect(await run).toBe(0)
    expect(runs).toEqual([])
    expect(out()).toBe('stopped by SIGTERM before the shop started; nothing was started\n')
    expect(signals.listenerCount('SIGTERM')).toBe(0)
    expect(signals.listenerCount('SIGINT')).toBe(0)
  })

  it('a SIGHUP held while loading stops it too (the shop stops on SIGHUP), exit 0', async () => {
    const out = captureStdout()
    const signals = new EventEmitter()
    const runs: unknown[] = []
    const deps: DemoCommandDeps = {
      signals: signals as unknown as SignalTarget,
      loadShop: async () => async (options) => {
        runs.push(options)
        return { ok: true }
      },
    }
    const run = demoCommand(['--quiet'], deps)
    signals.emit('SIGHUP', 'SIGHUP')
    expect(await run).toBe(0)
    expect(runs).toEqual([])
    expect(out()).toBe('stopped by SIGHUP before the shop started; nothing was started\n')
    for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP'])
      expect(signals.listenerCount(signal), signal).toBe(0)
  })

  it('hands the signals over to the shop once it runs (its own handlers take them)', async () => {
    captureStdout()
    const signals = new EventEmitter()
    const held: number[] = []
    const deps: DemoCommandDeps = {
      signals: signals as unknown as SignalTarget,
      loadShop: async () => async () => {
        // The shop installs its handlers as it starts (synchronously): the holder is gone.
        await Promise.resolve()
        held.push(signals.listenerCount('SIGTERM'), signals.listenerCount('SIGINT'))
        return { ok: true }
      },
    }
    expect(await demoCommand(['--quiet'], deps)).toBe(0)
    expect(held).toEqual([0, 0])
  })
})

describe('breakwater demo as a process: SIGTERM while --db does not answer yet', () => {
  beforeAll(() => {
    ensureShopBuilt()
  }, 300_000)

  it('stops at once without starting the shop, exit 0', async () => {
    const silent = await startSilentServer()
    const cli = spawnCliFromSources([
      'demo',
      '--db',
      `postgres://demo:secret@127.0.0.1:${silent.port}/shop`,
    ])
    try {
      await silent.firstConnection
      cli.child.kill('SIGTERM')
      expect(await cli.exited, cli.stdout() + cli.stderr()).toEqual({ code: 0, signal: null })
      expect(cli.stdout()).toBe('stopped by SIGTERM before the shop started; nothing was started\n')
      expect(cli.stderr()).toBe('')
    } finally {
      cli.kill()
      await silent.close()
    }
  })
})
