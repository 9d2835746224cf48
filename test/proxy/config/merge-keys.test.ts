// YAML merge keys (`<<: *defaults`), which operators use to share settings between services,
// were refused as an unknown key `<<` (the loader read YAML 1.2, which has none). They are
// merged now, as YAML 1.1 and most tools do, and the merged result is validated as if written
// out in full.

import { describe, expect, it } from 'vitest'
import { parseProxyConfig } from '../../../src/proxy/config/index.js'
import { problemsOf } from './problems.js'

const listeners = 'listeners: [{ name: out, role: ambassador, port: 15001 }]\n'

describe('YAML merge keys', () => {
  it('merge the settings of an anchored mapping; keys written beside them win', () => {
    const config = parseProxyConfig(
      `services:
  orders: &defaults
    endpoints: [http://127.0.0.1:3001]
    loadBalancer: least-request
    retry: { attempts: 5 }
  payments:
    endpoints: [http://127.0.0.1:3002]
    <<: *defaults
    timeouts: &slow { connectMs: 500, readMs: 20000, overallMs: 60000 }
  billing:
    <<: [*defaults, { timeouts: *slow }]
    loadBalancer: round-robin
${listeners}`,
      'test.yaml',
    )
    const payments = config.services.get('payments')
    expect(payments?.discovery).toEqual({ kind: 'static', endpoints: ['http://127.0.0.1:3002'] })
    expect(payments?.loadBalancer).toBe('least-request')
    expect(payments?.retry?.attempts).toBe(5)
    expect(payments?.timeouts.connectMs).toBe(500)
    const billing = config.services.get('billing')
    expect(billing?.discovery).toEqual({ kind: 'static', endpoints: ['http://127.0.0.1:3001'] })
    expect(billing?.loadBalancer).toBe('round-robin')
    expect(billing?.timeouts.readMs).toBe(20000)
  })

  it('validate what was merged, under the path it was merged into', () => {
    const message = problemsOf(`services:
  orders: &defaults
    endpoints: [http://127.0.0.1:3001]
    retry: { attempts: 0 }
  payments:
    <<: *defaults
    discovery: { file: /etc/payments }
${listeners}`)
    expect(message).toContain('services.orders.retry.attempts: expected integer >= 1, got 0')
    expect(message).toContain('services.payments.retry.attempts: expected integer >= 1, got 0')
    expect(message).toContain(
      'services.payments: expected exactly one of endpoints, discovery.dns or discovery.file, got 2 of them',
    )
  })

  it('report an unknown key that was merged', () => {
    const message = problemsOf(`services:
  orders: &defaults { endpoints: [http://127.0.0.1:3001], retyr: { attempts: 2 } }
  payments: { <<: *defaults }
${listeners}`)
    expect(message).toContain('services.payments.retyr: unknown key')
  })

  // The place given was the mapping the merge or alias stands in (or its parent), where the
  // offending text is not: the operator looked at `<<: *defaults` for a typo written elsewhere.
  it('point at where a merged or aliased problem is written', () => {
    const message = problemsOf(`x-defaults: &defaults
  timeouts: { conectMs: 500 }
  retry: { attempts: 0 }
x-slow: &slow { connectMs: 0 }
services:
  payments: { <<: *defaults, endpoints: [http://127.0.0.1:3001] }
  orders: { endpoints: [http://127.0.0.1:3002], timeouts: *slow }
${listeners}`)
    expect(message).toContain(
      'services.payments.timeouts.conectMs: unknown key (not part of the proxy config) (line 2, column 15)',
    )
    expect(message).toContain(
      'services.payments.retry.attempts: expected integer >= 1, got 0 (line 3, column 22)',
    )
    expect(message).toContain(
      'services.orders.timeouts.connectMs: expected integer in [1, 2147483647], got 0 (line 4, column 28)',
    )
  })

  it.each([
    ['an alias of a value', 'attempts: &x 2', '*x', 'a number'],
    ['a list of values', '', '[1, 2]', 'a list holding a number'],
    ['a string', '', 'defaults', 'a string'],
  ])('refuse a merge of %s, naming the key', (_, anchor, merged, got) => {
    const message = problemsOf(`services:
  orders:
    ${anchor === '' ? '' : `retry: { ${anchor} }\n    `}endpoints: [http://127.0.0.1:3001]
  payments: { endpoints: [http://127.0.0.1:3002], <<: ${merged} }
${listeners}`)
    expect(message).toContain('(1 problem)')
    expect(message).toContain(
      `services.payments["<<"]: expected a mapping, or a list of mappings, to merge, got ${got}`,
    )
  })
})
