// Isolations in the multi-process mode: the primary remembers them so that a restarted worker
// is given them again, and must forget those a reload undid in the workers (a service the
// reload changed gets a new runtime there, with a closed breaker; a removed one is gone), as
// one process does. The workers are in-memory fakes of cluster's Worker that accept every
// command.

import { describe, expect, it } from 'vitest'
import { parseProxyConfig } from '../../../src/proxy/config/load.js'
import { asWorker, reloadingBackend } from './cluster-support.js'

const yaml = (services: string) => `services:
${services}
listeners:
  - { name: out, role: ambassador, host: 127.0.0.1, port: 0 }
workers: 2
`

describe('cluster backend: isolations across a reload', () => {
  it('gives a restarted worker only the isolations the reload kept, as a single process keeps them', async () => {
    const before = parseProxyConfig(
      yaml(`  orders: { endpoints: ['http://127.0.0.1:1'] }
  payments: { endpoints: ['http://127.0.0.1:2'] }
  stock: { endpoints: ['http://127.0.0.1:3'] }`),
      'before',
    )
    // orders unchanged, payments moved to another endpoint, stock removed.
    const after = parseProxyConfig(
      yaml(`  orders: { endpoints: ['http://127.0.0.1:1'] }
  payments: { endpoints: ['http://127.0.0.1:4'] }`),
      'after',
    )
    const { backend, up } = reloadingBackend(
      { config: before, text: 'before' },
      { config: after, text: 'after' },
    )
    const first = up(1)
    await backend.isolate('orders')
    await backend.isolate('payments')
    await backend.isolate('stock')
    expect(await backend.reload()).toBeUndefined()
    backend.detach(asWorker(first))
    // The replacement of a crashed worker.
    const next = up(2)
    expect(next.commands()).toEqual([{ op: 'isolate', service: 'orders' }])
  })
})
