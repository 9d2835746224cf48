// A SIGHUP that comes while `breakwater proxy` is still loading its modules and reading its
// file, before the handlers of the single process or of the multi-process primary are
// installed: it must not be lost (nor, delivered by the OS, end the process, SIGHUP's default
// action), and the reload it asks for is applied once the proxy is up.

import { EventEmitter } from 'node:events'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { proxyCommand } from '../../src/cli/proxy.js'
import type { SignalTarget } from '../../src/process/index.js'
import { spawnNode } from '../process/cli-process.js'
import {
  captureLog,
  eventually,
  type NamedUpstream,
  startNamedUpstream,
} from '../proxy/runtime/helpers.js'

let upstream: NamedUpstream
const dir = mkdtempSync(join(tmpdir(), 'bw-proxy-early-hup-'))
const fixture = fileURLToPath(new URL('./fixtures/proxy-early-hup.ts', import.meta.url))

beforeAll(async () => {
  upstream = await startNamedUpstream('app')
})
afterAll(async () => {
  await upstream.close()
  rmSync(dir, { recursive: true, force: true })
})

function configFile(name: string): string {
  const file = join(dir, name)
  writeFileSync(
    file,
    `services: { a: { endpoints: [${upstream.url}] } }\nlisteners: [{ name: out, role: ambassador, port: 0 }]\ndrainTimeoutMs: 1000\n`,
  )
  return file
}

describe('breakwater proxy, SIGHUP while its modules load', () => {
  it('one process: is held from the call on, and reloads once started', async () => {
    const signals = new EventEmitter()
    const out = captureLog()
    const run = proxyCommand(['--config', configFile('single.yaml')], {
      stdout: out,
      signals: signals as unknown as SignalTarget,
    })
    // Synchronously after the call: the command has loaded nothing yet.
    expect(signals.listenerCount('SIGHUP')).toBe(1)
    signals.emit('SIGHUP', 'SIGHUP')
    await eventually(() => out.lines().some((l) => l.msg === 'config reloaded'), 'the reload')
    const messages = out.lines().map((l) => l.msg)
    expect(messages).toContain('SIGHUP while starting: reloading once started')
    expect(messages.indexOf('proxy started')).toBeLessThan(messages.indexOf('config reloaded'))
    signals.emit('SIGTERM', 'SIGTERM')
    expect(await run).toBe(0)
    expect(signals.listenerCount('SIGHUP')).toBe(0)
  })

  it('with workers: the primary holds it and reloads every worker once they are forked', async () => {
    const cli = spawnNode([
      '--import',
      'tsx',
      fixture,
      '--config',
      configFile('workers.yaml'),
      '--workers',
      '2',
    ])
    try {
      await cli.waitForLine(
        (l) => l.msg === 'SIGHUP while starting: reloading once started' && l.role === 'primary',
        'the SIGHUP to be noted by the primary',
      )
      await cli.waitForLine(
        (l) => l.msg === 'config reloaded in every worker',
        'the reload asked while starting',
      )
      cli.child.kill('SIGTERM')
      expect(await cli.exited).toEqual({ code: 0, signal: null })
    } finally {
      cli.kill()
    }
  })
})
