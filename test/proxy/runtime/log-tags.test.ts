// How the proxy command tags its log lines (docs/proxy.md): `component` (`proxy`, or the part
// that wrote the line) and `pid`, where the relay and the saga worker write
// `service: breakwater-<name>`. The proxy cannot take that tag: `service` on its lines is the
// upstream service a line is about, and a process tag bound to every line would stand in for it
// on lines that name none: an ambassador's 404 access line would read
// `service: "breakwater-proxy"`, and so would a request the proxy answered without calling one.
import { EventEmitter } from 'node:events'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, expect, it } from 'vitest'
import { proxyCommand } from '../../../src/cli/proxy.js'
import type { SignalTarget } from '../../../src/process/index.js'
import { captureLog, eventually, http, type NamedUpstream, startNamedUpstream } from './helpers.js'

let upstream: NamedUpstream
beforeAll(async () => {
  upstream = await startNamedUpstream('a')
})
afterAll(async () => {
  await upstream.close()
})

it('tags every line with component and pid, and keeps service for the upstream service', async () => {
  const file = join(mkdtempSync(join(tmpdir(), 'bw-proxy-tags-')), 'proxy.yaml')
  writeFileSync(
    file,
    `services: { a: { endpoints: [${upstream.url}] } }\nlisteners: [{ name: out, role: ambassador, port: 0 }]\ndrainTimeoutMs: 1000\n`,
  )
  const signals = new EventEmitter()
  const out = captureLog()
  const err = captureLog()
  const run = proxyCommand(['--config', file], {
    stdout: out,
    stderr: err,
    signals: signals as unknown as SignalTarget,
  })
  await eventually(
    () => out.lines().some((l) => l.msg === 'proxy started') || err.text() !== '',
    'the start',
  )
  expect(err.text()).toBe('')
  const started = out.lines().find((l) => l.msg === 'proxy started') as {
    listeners: { port: number }[]
  }
  const port = started.listeners[0]?.port ?? 0
  expect((await http(port, '/a/x')).status).toBe(200)
  expect((await http(port, '/ghost/x')).status).toBe(404)
  await eventually(
    () => out.lines().filter((l) => l.msg === 'access').length === 2,
    'two access lines',
  )
  signals.emit('SIGTERM', 'SIGTERM')
  expect(await run).toBe(0)

  const lines = out.lines()
  for (const line of lines) expect(line).toMatchObject({ component: 'proxy', pid: process.pid })
  const access = lines.filter((l) => l.msg === 'access')
  expect(access[0]).toMatchObject({ status: 200, service: 'a' })
  expect(access[1]).toMatchObject({ status: 404 })
  expect(access[1]).not.toHaveProperty('service')
})
