// Two uses of one port are refused by the loader (the second cannot bind), also when the
// addresses are written differently: an IPv6 address has many spellings (`::` and `::0`,
// `::1` and `0:0:0:0:0:0:0:1`), and the loader compared the text, so such a file passed
// `--check` and failed to start with EADDRINUSE.

import { describe, expect, it } from 'vitest'
import { parseProxyConfig } from '../../../src/proxy/config/index.js'
import { problemsOf } from './problems.js'

const services = 'services: { app: { endpoints: [http://127.0.0.1:3000] } }\n'

describe('a port used twice', () => {
  it.each([
    ['::0', '127.0.0.1'],
    ['0:0:0:0:0:0:0:0', '::1'],
    ['0:0:0:0:0:0:0:1', '::1'],
    ['::1', '0000::0001'],
  ])('is refused with the addresses %s and %s', (first, second) => {
    const yaml = `${services}listeners:
  - { name: a, role: ambassador, host: "${first}", port: 18080 }
  - { name: b, role: ambassador, host: "${second}", port: 18080 }
`
    expect(problemsOf(yaml)).toContain(
      'listeners[1].port: expected a port not already used by listeners[0].port',
    )
  })

  it('is taken on two different addresses', () => {
    const yaml = `${services}listeners:
  - { name: a, role: ambassador, host: "::1", port: 18080 }
  - { name: b, role: ambassador, host: "127.0.0.1", port: 18080 }
`
    expect(() => parseProxyConfig(yaml, 't')).not.toThrow()
  })
})
