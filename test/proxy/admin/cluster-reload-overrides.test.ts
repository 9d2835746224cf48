// Route switches in the multi-process mode: the primary remembers them so that a restarted
// worker is given them again, and after a reload must remember exactly those the workers kept
// (one rule for both, see inbound/route-overrides.ts): a switch stays when the reload left the
// route's targets and the services it names alone, and goes when the route was removed, its
// targets edited or a service it names removed. The workers are in-memory fakes of cluster's
// Worker that accept every command.

import { describe, expect, it } from 'vitest'
import { parseProxyConfig } from '../../../src/proxy/config/load.js'
import { asWorker, reloadingBackend } from './cluster-support.js'

const before = `services:
  legacy: { endpoints: ['http://127.0.0.1:1'], timeouts: { overallMs: 30000 } }
  modern: { endpoints: ['http://127.0.0.1:2'] }
  spare: { endpoints: ['http://127.0.0.1:3'] }
listeners:
  - name: in
    role: gateway
    port: 0
    routes:
      - { name: kept, match: { prefix: /kept }, targets: [{ service: legacy }] }
      - { name: edited, match: { prefix: /edited }, targets: [{ service: legacy }] }
      - { name: removed, match: { prefix: /removed }, targets: [{ service: legacy }] }
      - { name: spared, match: { prefix: /spared }, targets: [{ service: legacy }] }
workers: 2
`
// legacy's timeout edited (unrelated to every switch), edited's targets changed, removed gone,
// spare (named by spared's switch at weight 0) gone.
const after = before
  .replace('overallMs: 30000', 'overallMs: 5000')
  .replace(
    '{ name: edited, match: { prefix: /edited }, targets: [{ service: legacy }] }',
    '{ name: edited, match: { prefix: /edited }, targets: [{ service: modern }] }',
  )
  .replace(
    '      - { name: removed, match: { prefix: /removed }, targets: [{ service: legacy }] }\n',
    '',
  )
  .replace("  spare: { endpoints: ['http://127.0.0.1:3'] }\n", '')

describe('cluster backend: route switches across a reload', () => {
  it('gives a worker restarted after a reload exactly the switches the reload kept', async () => {
    const { backend, up } = reloadingBackend(
      { config: parseProxyConfig(before, 'before'), text: before },
      { config: parseProxyConfig(after, 'after'), text: after },
    )
    const first = up(1)
    const toModern = [{ service: 'modern', weight: 1 }]
    for (const route of ['kept', 'edited', 'removed']) await backend.switchRoute(route, toModern)
    await backend.switchRoute('spared', [
      { service: 'modern', weight: 1 },
      { service: 'spare', weight: 0 },
    ])
    expect(await backend.reload()).toBeUndefined()
    backend.detach(asWorker(first))
    // The replacement of a crashed worker.
    const next = up(2)
    expect(next.commands()).toEqual([{ op: 'switchRoute', route: 'kept', targets: toModern }])
  })

  it('still forgets a switch that was rolled back before the reload', async () => {
    const same = { config: parseProxyConfig(before, 'before'), text: before }
    const { backend, up } = reloadingBackend(same, same)
    const first = up(1)
    await backend.switchRoute('kept', [{ service: 'modern', weight: 1 }])
    await backend.resetRoute('kept')
    expect(await backend.reload()).toBeUndefined()
    backend.detach(asWorker(first))
    const next = up(2)
    expect(next.commands()).toEqual([])
  })
})
