// discovery.dns.name took any text: a URL, a name with a space, or `${ORDERS_HOST}` from a file
// written for a tool that substitutes variables passed the loader and `--check`, and then every
// lookup failed, so every request to the service was refused 503 while the proxy ran.

import { describe, expect, it } from 'vitest'
import { parseProxyConfig } from '../../../src/proxy/config/index.js'
import { problemsOf } from './problems.js'

const config = (
  name: string,
  recordType = 'A',
  port = recordType === 'SRV' ? '' : ', port: 8080',
): string => `
services:
  orders: { discovery: { dns: { name: ${JSON.stringify(name)}, recordType: ${recordType}${port} } } }
listeners: [{ name: out, role: ambassador, port: 15001 }]
`

describe('discovery.dns.name', () => {
  it.each([
    'http://orders.internal',
    'orders.internal:8080',
    'orders internal',
    '$' + '{ORDERS_HOST}',
    'orders..internal',
    `${'a'.repeat(64)}.internal`,
    `${'abcdefghi.'.repeat(26)}com`,
  ])('refuses %s', (name) => {
    const message = problemsOf(config(name))
    expect(message).toContain('(1 problem)')
    expect(message).toContain('services.orders.discovery.dns.name: expected a host name to resolve')
  })

  it.each([
    ['orders.internal', 'A'],
    ['orders.internal.', 'AAAA'],
    ['orders', 'A'],
    ['_http._tcp.orders.svc.cluster.local', 'SRV'],
    ['10.0.0.7', 'A'],
  ])('takes %s', (name, recordType) => {
    const service = parseProxyConfig(config(name, recordType), 'test.yaml').services.get('orders')
    expect(service?.discovery).toMatchObject({ kind: 'dns', name })
  })
})

// An SRV record gives each target's port, so a `port` written beside recordType: SRV was never
// used: the file said 8080 and the proxy dialled whatever the records said, without a word.
describe('discovery.dns.port with recordType SRV', () => {
  it('is refused, naming the port and saying SRV records give it', () => {
    const message = problemsOf(config('_http._tcp.orders.internal', 'SRV', ', port: 8080'))
    expect(message).toContain('(1 problem)')
    expect(message).toContain(
      "services.orders.discovery.dns.port: expected no port with recordType SRV (each SRV record gives its target's port), got 8080",
    )
  })
})
