// A file the loader accepts must start: every value the listeners and services refuse at
// start is refused by the loader first, naming its path, so `--check` never calls a file valid
// that then fails to start (or starts and silently never does what it says).

import { describe, expect, it } from 'vitest'
import { parseProxyConfig } from '../../../src/proxy/config/index.js'
import { problemsOf } from './problems.js'

const app = 'services: { app: { endpoints: [http://127.0.0.1:3000] } }\n'

function ambassador(extra: string): string {
  return `${app}listeners: [{ name: out, role: ambassador, port: 15001, ${extra} }]\n`
}

function route(extra: string): string {
  return `${app}listeners: [{ name: in, role: gateway, port: 15001, routes: [{ name: r, targets: [{ service: app }], ${extra} }] }]\n`
}

function dns(servers: string): string {
  return `services: { app: { discovery: { dns: { name: app.internal, port: 80, servers: ${servers} } } } }
listeners: [{ name: out, role: ambassador, port: 15001 }]
`
}

describe('listener limits', () => {
  it('refuses a requestTimeoutMs below the headersTimeoutMs (node:http refuses the pair at start)', () => {
    expect(problemsOf(ambassador('limits: { requestTimeoutMs: 5000 }'))).toContain(
      'listeners[0].limits.requestTimeoutMs: expected at least headersTimeoutMs (10000, the default), got 5000',
    )
    expect(
      problemsOf(ambassador('limits: { headersTimeoutMs: 20000, requestTimeoutMs: 15000 }')),
    ).toContain(
      'listeners[0].limits.headersTimeoutMs: expected at most requestTimeoutMs (15000), got 20000',
    )
    expect(() =>
      parseProxyConfig(
        ambassador('limits: { headersTimeoutMs: 5000, requestTimeoutMs: 5000 }'),
        't',
      ),
    ).not.toThrow()
  })
})

describe('discovery.dns.servers', () => {
  it('refuses an entry that is not an IP address with an optional port', () => {
    const message = problemsOf(dns('[dns.internal, "1.2.3.4:99999", "1.2.3.4:0", "", "::1:x"]'))
    for (const at of [0, 1, 2, 3, 4])
      expect(message).toContain(
        `services.app.discovery.dns.servers[${at}]: expected "ip" or "ip:port" of a DNS server`,
      )
  })

  it('takes IPv4 and IPv6 addresses, with or without a port', () => {
    const config = parseProxyConfig(
      dns('["10.0.0.2", "10.0.0.2:5353", "::1", "[::1]:53", "[fd00::2]"]'),
      't',
    )
    const discovery = config.services.get('app')?.discovery
    expect(discovery?.kind === 'dns' && discovery.servers).toEqual([
      '10.0.0.2',
      '10.0.0.2:5353',
      '::1',
      '[::1]:53',
      '[fd00::2]',
    ])
  })
})

describe('endpoints', () => {
  it('refuses an endpoint with a path (the service runtime takes only origins)', () => {
    const message = problemsOf(
      'services: { app: { endpoints: [http://127.0.0.1:3000/api, "http://127.0.0.1:0"] } }\n' +
        'listeners: [{ name: out, role: ambassador, port: 15001 }]\n',
    )
    expect(message).toContain('services.app.endpoints[0]: expected http:// or https:// URL')
    expect(message).toContain('services.app.endpoints[1]: expected http:// or https:// URL')
  })

  it('takes an origin with or without the trailing slash', () => {
    expect(() =>
      parseProxyConfig(
        'services: { app: { endpoints: [http://127.0.0.1:3000/, https://app.internal] } }\n' +
          'listeners: [{ name: out, role: ambassador, port: 15001 }]\n',
        't',
      ),
    ).not.toThrow()
  })
})

describe('ports', () => {
  it('refuses a wildcard address on a port a specific address took first', () => {
    const message = problemsOf(
      `${app}listeners:
  - { name: a, role: ambassador, host: 127.0.0.1, port: 15001 }
  - { name: b, role: ambassador, host: 0.0.0.0, port: 15001 }
admin: { host: "::", port: 15001, token: { env: T } }
`,
    )
    expect(message).toContain(
      'listeners[1].port: expected a port not already used by listeners[0].port, got 15001',
    )
    expect(message).toContain('admin.port: expected a port not already used by listeners[0].port')
  })

  it('lets two specific addresses share a port', () => {
    expect(() =>
      parseProxyConfig(
        `${app}listeners:
  - { name: a, role: ambassador, host: 127.0.0.1, port: 15001 }
  - { name: b, role: ambassador, host: 127.0.0.2, port: 15001 }
`,
        't',
      ),
    ).not.toThrow()
  })
})

describe('headers a route reads', () => {
  it('refuses matching on a header removed before routing, which would never match', () => {
    const message = problemsOf(
      route('match: { headers: { Host: shop.example, Connection: keep-alive, X-Canary: "1" } }'),
    )
    expect(message).toContain(
      'listeners[0].routes[0].match.headers.Host: expected a header that reaches the route',
    )
    expect(message).toContain('listeners[0].routes[0].match.headers.Connection: expected')
    expect(message).not.toContain('X-Canary')
  })

  it('refuses a sticky or retry-affinity header removed before routing', () => {
    const message = problemsOf(route('sticky: { header: TE }, retryAffinity: { header: expect }'))
    expect(message).toContain('listeners[0].routes[0].sticky.header: expected a header that')
    expect(message).toContain('listeners[0].routes[0].retryAffinity.header: expected a header that')
  })

  it('refuses the deadline header, which travels as the deadline and not as a header', () => {
    const message = problemsOf(
      `${route('match: { headers: { x-deadline: "5" } }')}deadlineHeader: X-Deadline\n`,
    )
    expect(message).toContain('listeners[0].routes[0].match.headers.x-deadline: expected a header')
  })
})

describe('bind addresses', () => {
  it('refuses a listener or admin host that is neither an IP address nor a host name', () => {
    const message = problemsOf(
      `${app}listeners:
  - { name: a, role: ambassador, host: "[::1]", port: 15001 }
  - { name: b, role: ambassador, host: "http://0.0.0.0", port: 15002 }
admin: { host: "local host", port: 15000, token: { env: T } }
`,
    )
    expect(message).toContain('listeners[0].host: expected IP address or host name to bind')
    expect(message).toContain('listeners[1].host: expected IP address or host name to bind')
    expect(message).toContain('admin.host: expected IP address or host name to bind')
  })

  it('takes IPv4, IPv6 and host names', () => {
    expect(() =>
      parseProxyConfig(
        `${app}listeners:
  - { name: a, role: ambassador, host: "::1", port: 15001 }
  - { name: b, role: ambassador, host: 0.0.0.0, port: 15002 }
  - { name: c, role: ambassador, host: localhost, port: 15003 }
  - { name: d, role: ambassador, host: proxy-1.internal, port: 15004 }
`,
        't',
      ),
    ).not.toThrow()
  })
})

describe('match.headers', () => {
  it('refuses one header name written twice in different case', () => {
    expect(problemsOf(route('match: { headers: { X-Canary: "1", x-canary: "2" } }'))).toContain(
      'listeners[0].routes[0].match.headers.x-canary: expected a header not already listed (as X-Canary; names are case-insensitive), got "x-canary"',
    )
  })
})
