// zod's records skip a `__proto__` key without a word (assigning it would replace the result's
// prototype), so a service named `__proto__` vanished from the config (a file holding only it
// started a proxy with no services), and a route matching on a header `__proto__` matched every
// request.

import { describe, expect, it } from 'vitest'
import { problemsOf } from './problems.js'

describe('a __proto__ key', () => {
  it('is refused as a service name', () => {
    const message = problemsOf(`services:
  __proto__: { endpoints: [http://127.0.0.1:3000] }
listeners: [{ name: out, role: ambassador, port: 15001 }]
`)
    expect(message).toContain('(1 problem)')
    expect(message).toContain(
      'services.__proto__: expected a key that is a name of letters, digits, ".", "_" or "-" (starting with a letter or digit), got "__proto__" (line 2, column 14)',
    )
  })

  it('is refused as a header a route matches on', () => {
    const message = problemsOf(`services:
  app: { endpoints: [http://127.0.0.1:3000] }
listeners:
  - name: in
    role: gateway
    port: 8080
    routes: [{ name: r, match: { headers: { __proto__: x } }, targets: [{ service: app }] }]
`)
    expect(message).toContain('(1 problem)')
    expect(message).toContain(
      'listeners[0].routes[0].match.headers.__proto__: expected a header name other than __proto__, got "__proto__" (line 7, column 56)',
    )
  })
})
