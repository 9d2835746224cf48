// A merge key needs an anchor, and an anchor had to stand on a real part of the config: the
// docker-compose habit of a free-standing block of defaults (`x-defaults: &defaults` at the
// top, `<<: *defaults` in each service) was refused as an unknown key. Top-level keys that
// start with `x-` are extension fields now, as in docker-compose: read as YAML (so they can
// hold anchors) and otherwise ignored. Every other unknown key is still refused, and so is an
// `x-` key anywhere but at the top level.

import { describe, expect, it } from 'vitest'
import {
  parseProxyConfig,
  proxyConfigJsonSchema,
  validateProxyDocument,
} from '../../../src/proxy/config/index.js'
import { keepsServiceRuntime } from '../../../src/proxy/config/reload.js'
import { problemsOf } from './problems.js'

const listeners = 'listeners: [{ name: out, role: ambassador, port: 15001 }]\n'

const withDefaults = (extra: string): string => `x-defaults: &defaults
  loadBalancer: least-request
  retry: { attempts: 5 }
  timeouts: { connectMs: 500, readMs: 20000, overallMs: 60000 }
${extra}services:
  orders:
    <<: *defaults
    endpoints: [http://127.0.0.1:3001]
  payments:
    <<: *defaults
    endpoints: [http://127.0.0.1:3002]
    loadBalancer: round-robin
${listeners}`

describe('top-level x- keys (extension fields)', () => {
  it('can hold the anchor that services merge, and are otherwise ignored', () => {
    const config = parseProxyConfig(withDefaults(''), 'test.yaml')
    const orders = config.services.get('orders')
    expect(orders?.loadBalancer).toBe('least-request')
    expect(orders?.retry?.attempts).toBe(5)
    expect(orders?.timeouts.readMs).toBe(20000)
    const payments = config.services.get('payments')
    expect(payments?.loadBalancer).toBe('round-robin')
    expect(payments?.retry?.attempts).toBe(5)
    expect([...config.services.keys()]).toEqual(['orders', 'payments'])
  })

  it('take any value, and leave nothing of themselves in the document', () => {
    const doc = validateProxyDocument(
      `x-note: kept by ops\nx-owners: [a, b]\nx-: 1\nx-empty:\nservices: { app: { endpoints: [http://127.0.0.1:3000] } }\n${listeners}`,
      'test.yaml',
      { workers: 2 },
    )
    expect(Object.keys(doc).filter((key) => key.startsWith('x-'))).toEqual([])
    expect(doc.workers).toBe(2)
  })

  it('are not validated themselves; what is merged from them is, where it is merged', () => {
    const message = problemsOf(`x-defaults: &defaults { retry: { attempts: 0 }, retyr: 1 }
x-unused: { retry: { attempts: 0 } }
services:
  orders: { <<: *defaults, endpoints: [http://127.0.0.1:3001] }
${listeners}`)
    expect(message).toContain('(2 problems)')
    expect(message).toContain('services.orders.retry.attempts: expected integer >= 1, got 0')
    expect(message).toContain('services.orders.retyr: unknown key')
    expect(message).not.toContain('x-')
  })

  it('are still read as YAML: a tag in one is refused, since a merge would take its text', () => {
    const message = problemsOf(
      `x-defaults: { tls: { serverName: !env ORDERS_HOST } }\nservices: { app: { endpoints: [http://127.0.0.1:3000] } }\n${listeners}`,
    )
    expect(message).toContain('x-defaults.tls.serverName: expected a value without a YAML tag')
  })

  it.each([
    ['another top-level key', 'defaults: &d { retry: { attempts: 2 } }\n', 'defaults: unknown key'],
    ['an upper-case X-', 'X-defaults: 1\n', 'X-defaults: unknown key'],
    ['an x_ key', 'x_defaults: 1\n', 'x_defaults: unknown key'],
  ])('do not open the door to %s', (_, extra, expected) => {
    const message = problemsOf(
      `${extra}services: { app: { endpoints: [http://127.0.0.1:3000] } }\n${listeners}`,
    )
    expect(message).toContain('(1 problem)')
    expect(message).toContain(expected)
  })

  it('are top-level only: one in a service, a listener or a nested setting is an unknown key', () => {
    const message = problemsOf(`services:
  app: { endpoints: [http://127.0.0.1:3000], x-owner: ops, retry: { x-why: slow } }
listeners: [{ name: out, role: ambassador, port: 15001, x-note: hi }]
`)
    expect(message).toContain('(3 problems)')
    expect(message).toContain('services.app.x-owner: unknown key')
    expect(message).toContain('services.app.retry.x-why: unknown key')
    expect(message).toContain('listeners[0].x-note: unknown key')
  })

  it('change nothing a reload compares: a config that differs only in them keeps every service', () => {
    const before = parseProxyConfig(withDefaults('x-note: first\n'), 'test.yaml')
    const after = parseProxyConfig(
      withDefaults('x-note: second\nx-owners: [ops]\n').replace('x-defaults:', 'x-base:'),
      'test.yaml',
    )
    expect(after).toEqual(before)
    expect(keepsServiceRuntime(before, after, 'orders')).toBe(true)
    expect(keepsServiceRuntime(before, after, 'payments')).toBe(true)
  })

  it('are allowed by the JSON Schema, so editors do not flag them; other keys are not', () => {
    const schema = proxyConfigJsonSchema() as {
      patternProperties?: Record<string, unknown>
      additionalProperties: boolean
    }
    expect(schema.patternProperties).toEqual({ '^x-': {} })
    expect(schema.additionalProperties).toBe(false)
  })
})
