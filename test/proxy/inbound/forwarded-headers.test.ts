// What an untrusted gateway lets through of the headers a client could use to claim another
// address or another path than the one the route table judged: none of them.

import type { IncomingMessage } from 'node:http'
import { describe, expect, it } from 'vitest'
import { forwardedHeaders } from '../../../src/proxy/inbound/forwarded-headers.js'
import type { InboundRequest } from '../../../src/proxy/inbound/request.js'

function inboundWith(headers: Record<string, string>): InboundRequest {
  return {
    method: 'GET',
    path: '/public/x',
    query: '',
    headers,
    host: 'shop.example',
    requestId: 'r-1',
    deadlineAt: undefined,
    body: undefined,
    signal: new AbortController().signal,
    startedAt: 0,
  }
}

const req = { socket: { remoteAddress: '10.0.0.9' } } as unknown as IncomingMessage

// Read by widespread client-address helpers (request-ip, Spring's RemoteIpValve, Rails'
// RemoteIp, ASP.NET) as the client's address, before or instead of X-Forwarded-For.
const addressClaims = {
  'x-client-ip': '6.6.6.6',
  'true-client-ip': '6.6.6.6',
  'cf-connecting-ip': '6.6.6.6',
  'fastly-client-ip': '6.6.6.6',
  'x-cluster-client-ip': '6.6.6.6',
  'x-forwarded': 'for=6.6.6.6',
  'forwarded-for': '6.6.6.6',
}
// Read by IIS URL Rewrite, Symfony and Zend/Laminas as the request's real path: the app would
// serve another path than the route table matched.
const pathClaims = { 'x-original-url': '/admin', 'x-rewrite-url': '/admin' }

describe('forwardedHeaders on an untrusted gateway', () => {
  it('drops every header through which a client claims another address or path', () => {
    const headers = forwardedHeaders(
      inboundWith({ ...addressClaims, ...pathClaims, 'x-kept': 'yes' }),
      req,
      'http',
      false,
      false,
    )
    for (const name of [...Object.keys(addressClaims), ...Object.keys(pathClaims)])
      expect(headers[name], name).toBeUndefined()
    expect(headers['x-kept']).toBe('yes')
    expect(headers['x-forwarded-for']).toBe('10.0.0.9')
  })

  it('keeps them on a listener that trusts what is in front of it', () => {
    const headers = forwardedHeaders(
      inboundWith({ ...addressClaims, ...pathClaims }),
      req,
      'http',
      true,
      false,
    )
    for (const [name, value] of Object.entries({ ...addressClaims, ...pathClaims }))
      expect(headers[name], name).toBe(value)
  })
})

// WSGI and CGI servers name a header's variable by upper-casing it and reading `-` as `_`, so
// `X_Forwarded_For` reaches the app as HTTP_X_FORWARDED_FOR, the variable the real one fills.
describe('forwardedHeaders and underscore spellings', () => {
  const underscored = {
    x_forwarded_for: '6.6.6.6',
    x_forwarded_proto: 'https',
    x_forwarded_host: 'evil.example',
    'x-forwarded_port': '443',
    x_forwarded_prefix: '/admin',
    'x-real_ip': '6.6.6.6',
    x_original_url: '/admin',
    x_rewrite_url: '/admin',
    'true_client-ip': '6.6.6.6',
    forwarded_for: '6.6.6.6',
  }

  it.each([false, true])(
    'drops the underscore spelling of every forwarding header (trusted: %s)',
    (trusted) => {
      const headers = forwardedHeaders(
        inboundWith({ ...underscored, x_kept_header: 'yes', 'x-forwarded-for': '5.5.5.5' }),
        req,
        'http',
        trusted,
        false,
      )
      for (const name of Object.keys(underscored)) expect(headers[name], name).toBeUndefined()
      expect(headers.x_kept_header).toBe('yes')
      expect(headers['x-forwarded-for']).toBe(trusted ? '5.5.5.5, 10.0.0.9' : '10.0.0.9')
    },
  )

  it('drops the underscore spelling of method overrides on a route chosen by method', () => {
    const overrides = {
      x_http_method_override: 'DELETE',
      x_http_method: 'DELETE',
      'x-method_override': 'DELETE',
    }
    const onMethodRoute = forwardedHeaders(inboundWith(overrides), req, 'http', true, true)
    for (const name of Object.keys(overrides)) expect(onMethodRoute[name], name).toBeUndefined()
    const elsewhere = forwardedHeaders(inboundWith(overrides), req, 'http', false, false)
    for (const name of Object.keys(overrides)) expect(elsewhere[name], name).toBe('DELETE')
  })
})

// httpoxy (CVE-2016-5385): CGI turns a request's `Proxy` header into HTTP_PROXY, the variable
// HTTP clients in PHP, Python and Go CGI apps take as their outbound proxy. `Client-IP` becomes
// HTTP_CLIENT_IP, which common PHP code reads as the client's address before X-Forwarded-For.
describe('forwardedHeaders and CGI variables', () => {
  it('drops Proxy and Client-IP on an untrusted gateway', () => {
    const headers = forwardedHeaders(
      inboundWith({
        proxy: 'http://attacker.example:8080',
        'client-ip': '6.6.6.6',
        client_ip: '6.6.6.6',
      }),
      req,
      'http',
      false,
      false,
    )
    expect(headers.proxy).toBeUndefined()
    expect(headers['client-ip']).toBeUndefined()
    expect(headers.client_ip).toBeUndefined()
  })

  it('drops Proxy on a trusted gateway too, and keeps Client-IP there', () => {
    // No load balancer sets Proxy, so on a trusted listener it can only be the client's.
    const headers = forwardedHeaders(
      inboundWith({ proxy: 'http://attacker.example:8080', 'client-ip': '6.6.6.6' }),
      req,
      'http',
      true,
      false,
    )
    expect(headers.proxy).toBeUndefined()
    expect(headers['client-ip']).toBe('6.6.6.6')
  })
})
