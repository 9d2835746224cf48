// A route's `sticky.cookie` names the cookie to hash; it holds no secret. The loader hid a bad
// one as an inline secret (its key, `cookie`, reads as a secret field's), where a bad
// `sticky.header` was shown, so the message did not say what was wrong with the name. Values
// under a key that is a real Cookie header (a route's header match) stay hidden, and so does
// a cookie's value pasted with its name.

import { describe, expect, it } from 'vitest'
import { problemsOf } from './problems.js'

const services = 'services:\n  a: { endpoints: [http://127.0.0.1:1] }\n'
const gateway = (route: string) =>
  `${services}listeners:\n  - { name: g, role: gateway, port: 1, routes: [{ name: r, targets: [{ service: a }], ${route} }] }\n`
const cookieName = "cookie name (letters, digits and !#$%&'*+-.^_`|~)"

describe('sticky.cookie', () => {
  it('shows a bad cookie name, as a bad sticky header is', () => {
    expect(problemsOf(gateway('sticky: { cookie: "user id" }'))).toContain(
      `listeners[0].routes[0].sticky.cookie: expected ${cookieName}, got "user id"`,
    )
    expect(problemsOf(gateway('sticky: { header: "x user" }'))).toContain(
      'listeners[0].routes[0].sticky.header: expected HTTP header name, got "x user"',
    )
  })

  it('hides a cookie pasted with its value (name=value)', () => {
    const message = problemsOf(gateway('sticky: { cookie: "sid=Zm9vYmFyc2VjcmV0dmFsdWU" }'))
    expect(message).toContain(
      `listeners[0].routes[0].sticky.cookie: expected ${cookieName}, got a string with "=" (not shown: it may hold a cookie's value)`,
    )
    expect(message).not.toContain('Zm9vYmFyc2VjcmV0dmFsdWU')
  })

  it.each(['Cookie', 'set-cookie'])('still hides a bad value of a %s header match', (header) => {
    const message = problemsOf(
      gateway(`match: { prefix: /d, headers: { ${header}: "sid=Zm9vYmFyc2VjcmV0dmFsdWU\\x01" } }`),
    )
    expect(message).toContain(
      `listeners[0].routes[0].match.headers.${header}: expected a header value of printable ASCII, without leading or trailing whitespace, got a string (not shown: it looks like an inline secret)`,
    )
    expect(message).not.toContain('Zm9vYmFyc2VjcmV0dmFsdWU')
  })
})
