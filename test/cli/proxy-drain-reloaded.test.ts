// `breakwater proxy`'s own bound on the drain follows the config in force at the signal: a
// reload that raises drainTimeoutMs (not a start-only setting) must not leave the command giving
// up, and exiting 1 under the requests it should let finish, at the start config's bound.

import { EventEmitter } from 'node:events'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { proxyCommand } from '../../src/cli/proxy.js'
import type { SignalTarget } from '../../src/process/index.js'
import { ManualClock } from '../../src/testing/index.js'
import {
  captureLog,
  eventually,
  http,
  outcome,
  startNamedUpstream,
} from '../proxy/runtime/helpers.js'

const yaml = (url: string, drainTimeoutMs: number): string =>
  `services: { a: { endpoints: [${url}] } }\nlisteners: [{ name: out, role: ambassador, port: 0 }]\ndrainTimeoutMs: ${drainTimeoutMs}\n`

/** Lets the promise jobs a timer started run. */
const settle = () => new Promise((resolve) => setImmediate(resolve))

describe('breakwater proxy drained after a reload that raised drainTimeoutMs', () => {
  it('waits for the reloaded drainTimeoutMs (plus its margin), not the start config one', async () => {
    const upstream = await startNamedUpstream('a', { hold: () => true })
    const file = join(mkdtempSync(join(tmpdir(), 'bw-proxy-drain-reload-')), 'proxy.yaml')
    writeFileSync(file, yaml(upstream.url, 100))
    const signals = new EventEmitter()
    const out = captureLog()
    const clock = new ManualClock()
    const exits: number[] = []
    const run = outcome(
      proxyCommand(['--config', file], {
        stdout: out,
        signals: signals as unknown as SignalTarget,
        clock,
        exit: (code) => exits.push(code),
      }),
    )
    try {
      await eventually(() => out.lines().some((l) => l.msg === 'proxy started'), 'the start')
      const port = (
        out.lines().find((l) => l.msg === 'proxy started') as {
          listeners: { port: number }[]
        }
      ).listeners[0]?.port as number
      writeFileSync(file, yaml(upstream.url, 600_000))
      signals.emit('SIGHUP', 'SIGHUP')
      await eventually(() => out.lines().some((l) => l.msg === 'config reloaded'), 'the reload')
      const held = http(port, '/a/x').catch(() => undefined)
      await eventually(() => upstream.seen.length === 1, 'the request upstream')
      signals.emit('SIGTERM', 'SIGTERM')
      await settle()
      // Past the start config's bound (100 ms + the 5 s margin): still draining.
      await clock.advance(5_101)
      await settle()
      expect(exits).toEqual([])
      expect(run().done).toBe(false)
      // Past the reloaded one: given up, exit 1.
      await clock.advance(600_000)
      await eventually(() => run().done, 'the command to end')
      expect(exits).toEqual([1])
      expect(run().value).toBe(1)
      upstream.release()
      await held
    } finally {
      upstream.release()
      await upstream.close()
    }
  })
})
