// A reload that moves the idempotency store (a new idempotency.url) lets requests in flight on
// the old store finish on it: their result is still recorded there, and the client gets the
// app's answer, instead of the old store being closed under them (503, key left in progress).
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { createJsonLogger } from '../../../src/observability/logger.js'
import { type Proxy as RunningProxy, startProxy } from '../../../src/proxy/runtime.js'
import { captureLog, eventually, http, type NamedUpstream, startNamedUpstream } from './helpers.js'

let upstream: NamedUpstream
let proxy: RunningProxy | undefined
let dir: string

beforeEach(async () => {
  upstream = await startNamedUpstream('app', { hold: (url) => url.startsWith('/held') })
  dir = mkdtempSync(join(tmpdir(), 'bw-proxy-idem-reload-'))
})

afterEach(async () => {
  upstream.release()
  await proxy?.close(0)
  proxy = undefined
  await upstream.close()
  rmSync(dir, { recursive: true, force: true })
})

const yaml = (db: string): string => `services: { app: { endpoints: [${upstream.url}] } }
listeners:
  - name: in
    role: gateway
    port: 0
    routes:
      - { name: pay, match: { prefix: / }, targets: [{ service: app }], idempotency: { methods: [POST] } }
idempotency: { url: "sqlite:${join(dir, db)}" }
drainTimeoutMs: 5000
`

describe('idempotency store moved by a reload', () => {
  it('lets a request in flight record its result on the old store', async () => {
    const log = captureLog()
    proxy = await startProxy({ config: yaml('a.db'), logger: createJsonLogger({ output: log }) })
    const port = proxy.address('in').port
    const held = http(port, '/held', {
      method: 'POST',
      headers: { 'idempotency-key': 'key-1', 'content-type': 'application/json' },
      body: '{}',
    })
    await eventually(() => upstream.seen.length === 1, 'the request to reach the app')
    await proxy.reload(yaml('b.db'))
    upstream.release()
    const res = await held
    expect(res.status).toBe(200)
    expect(log.lines().filter((l) => l.level === 'error')).toEqual([])
  })
})
