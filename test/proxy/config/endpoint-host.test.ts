// An endpoint's host took anything WHATWG URL takes: `http://${ORDERS_HOST}:19101` (from a file
// written for a tool that substitutes variables) passed `--check`, and then every request to
// the service failed with 502. Its host must be an IP address or a name the resolver can look
// up, as discovery.dns.name's must.

import { describe, expect, it } from 'vitest'
import { parseProxyConfig } from '../../../src/proxy/config/index.js'
import { problemsOf } from './problems.js'

// Written in two parts: a `${...}` in a plain string reads as a template literal's mistake.
const variable = `http://$${'{'}ORDERS_HOST}:19101`

const config = (endpoint: string): string =>
  `services: { orders: { endpoints: [${JSON.stringify(endpoint)}] } }\nlisteners: [{ name: out, role: ambassador, port: 0 }]\n`

describe('a service endpoint host', () => {
  it.each([
    variable,
    'http://$ORDERS_HOST:19101',
    'http://{orders}:19101',
    'http://orders!:19101',
    'http://a..b:19101',
  ])('%s is refused, naming the endpoint', (endpoint) => {
    const message = problemsOf(config(endpoint))
    expect(message).toContain('services.orders.endpoints[0]: expected http:// or https:// URL')
    expect(message).toContain('host name or IP address')
  })

  it('a variable reference is told the config substitutes none', () => {
    expect(problemsOf(config(variable))).toContain('the config substitutes no variables')
  })

  it.each([
    'http://127.0.0.1:19101',
    'http://[::1]:19101',
    'https://orders.internal:443',
    'http://orders_v2.svc.cluster.local.:80',
    'http://localhost:3000',
    'http://bücher.example:80',
  ])('%s is taken', (endpoint) => {
    expect(() => parseProxyConfig(config(endpoint), 'test.yaml')).not.toThrow()
  })
})
