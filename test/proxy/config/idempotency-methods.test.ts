import { describe, expect, it } from 'vitest'
import { problemsOf } from './problems.js'

describe('proxy config: route idempotency methods', () => {
  it('refuses HEAD, which breakwater/idempotency refuses at start (no body to record)', () => {
    const message = problemsOf(`
services:
  a: { endpoints: [http://127.0.0.1:1] }
listeners:
  - name: gw
    role: gateway
    port: 9000
    routes:
      - { name: r, targets: [{ service: a }], idempotency: { methods: [POST, HEAD] } }
idempotency: { url: "sqlite:./proxy-idempotency.db" }
`)
    expect(message).toContain(
      'listeners[0].routes[0].idempotency.methods[1]: expected a method other than HEAD',
    )
  })
})
