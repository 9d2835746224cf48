// breakwater_proxy_tunnels_open was registered by the first WebSocket handshake: until then
// /metrics had no such series, so a dashboard showed no data rather than 0 and an alert on it
// (or on its absence) could not tell a proxy without tunnels from one not exporting them. Its
// series are now 0 from the start for every listener and route that can tunnel: a gateway route
// with `websocket`, an ambassador listener exposing a service with `websocket`.
import { afterEach, expect, it } from 'vitest'
import { createJsonLogger } from '../../../src/observability/logger.js'
import { type Proxy as RunningProxy, startProxy } from '../../../src/proxy/runtime.js'

let proxy: RunningProxy | undefined
afterEach(async () => {
  await proxy?.close(0)
  proxy = undefined
})

const config = (feedRoute: string) => `
services:
  chat: { endpoints: [http://127.0.0.1:9], websocket: true }
  plain: { endpoints: [http://127.0.0.1:9] }
listeners:
  - { name: out, role: ambassador, port: 0 }
  - { name: plain-out, role: ambassador, port: 0, services: [plain] }
  - name: in
    role: gateway
    port: 0
    routes:
      - { name: chat, match: { prefix: /chat }, targets: [{ service: chat }], websocket: true }
${feedRoute}
      - { name: rest, match: { prefix: / }, targets: [{ service: plain }] }
`

const gauge = (listener: string, route: string) =>
  `breakwater_proxy_tunnels_open{listener="${listener}",route="${route}"} 0`

it('exports tunnels_open as 0 for each route that can tunnel, before any handshake', async () => {
  proxy = await startProxy({ config: config(''), logger: createJsonLogger({ level: 'silent' }) })
  const metrics = await proxy.metricsText()
  expect(metrics).toContain(gauge('in', 'chat'))
  expect(metrics).toContain(gauge('out', 'ambassador'))
  // Nothing there can tunnel.
  expect(metrics).not.toContain('listener="plain-out",route="ambassador"} 0')
  expect(metrics).not.toContain(gauge('in', 'rest'))

  // A route a reload adds is exported at once too.
  await proxy.reload(
    config(
      '      - { name: feed, match: { prefix: /feed }, targets: [{ service: chat }], websocket: true }',
    ),
  )
  expect(await proxy.metricsText()).toContain(gauge('in', 'feed'))
})
