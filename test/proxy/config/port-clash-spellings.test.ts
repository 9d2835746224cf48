// Two uses of one port under different spellings of one IPv4 address (127.0.0.1, its
// IPv4-mapped IPv6 form, localhost) passed `--check` and failed the start with EADDRINUSE; a
// numeric host that is no dotted quad ("127.0.0.1.") passed and failed with ENOTFOUND.

import { describe, expect, it } from 'vitest'
import { parseProxyConfig } from '../../../src/proxy/config/index.js'
import { problemsOf } from './problems.js'

const services = 'services: { app: { endpoints: [http://127.0.0.1:3000] } }\n'
const two = (first: string, second: string): string => `${services}listeners:
  - { name: a, role: ambassador, host: "${first}", port: 18080 }
  - { name: b, role: ambassador, host: "${second}", port: 18080 }
`

describe('a port used twice under two spellings of one address', () => {
  it.each([
    ['127.0.0.1', '::ffff:127.0.0.1'],
    ['::ffff:7f00:1', '127.0.0.1'],
    ['0.0.0.0', '::ffff:10.0.0.1'],
    ['127.0.0.1', 'localhost'],
    ['localhost', '::1'],
    ['app.internal', 'other.internal'],
  ])('is refused with %s and %s', (first, second) => {
    expect(problemsOf(two(first, second))).toContain(
      'listeners[1].port: expected a port not already used by listeners[0].port',
    )
  })

  it('is refused between a listener and the admin API', () => {
    const yaml = `${two('::1', '127.0.0.1').replace('18080 }\n', '18081 }\n')}admin: { host: "::ffff:127.0.0.1", port: 18080 }\n`
    expect(problemsOf(yaml)).toContain('admin.port: expected a port not already used by')
  })

  it('is taken on two different IP addresses', () => {
    expect(() => parseProxyConfig(two('::1', '127.0.0.1'), 't')).not.toThrow()
    expect(() => parseProxyConfig(two('127.0.0.1', '::ffff:127.0.0.2'), 't')).not.toThrow()
  })
})

describe('a numeric host that is no dotted-quad IPv4 address', () => {
  it.each(['127.0.0.1.', '127.000.000.001', '127.1', '0x7f.0.0.1'])('%s is refused', (host) => {
    expect(
      problemsOf(
        `${services}listeners: [{ name: a, role: ambassador, host: "${host}", port: 18080 }]\n`,
      ),
    ).toContain('listeners[0].host: expected IP address or host name')
  })
})
