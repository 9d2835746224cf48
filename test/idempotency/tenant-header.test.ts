// `scope: { tenantHeader }` names a request header. A name no request can carry (not an HTTP
// token: a space, a colon, a line break, a non-ASCII letter) was accepted and then never
// matched, so every request fell back to the credential scope without a word; it is refused
// when the options are built instead.
import { describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import {
  createIdempotency,
  createMemoryIdempotencyStore,
  type IdempotencyRequest,
  type IdempotencyResponse,
  maxScopeBytes,
} from '../../src/idempotency/index.js'

function refusal(tenantHeader: unknown): unknown {
  try {
    createIdempotency({
      store: createMemoryIdempotencyStore(),
      scope: { tenantHeader } as { tenantHeader: string },
    })
  } catch (error) {
    return error
  }
  return undefined
}

describe('scope.tenantHeader', () => {
  it.each([
    ['x tenant', 'a space'],
    ['x-tenant:', 'a colon'],
    ['x-tenant\r\n', 'a line break'],
    ['tenänt', 'a non-ASCII letter'],
    ['"x-tenant"', 'quotes'],
    ['', 'nothing'],
  ])('refuses %j (%s) at construction, naming the option and the rule', (name) => {
    const error = refusal(name)
    expect(error).toBeInstanceOf(InvalidOptionError)
    expect(error).toMatchObject({ code: 'INVALID_OPTION', option: 'scope.tenantHeader' })
    expect((error as Error).message).toMatch(/^scope\.tenantHeader: expected .*HTTP token/)
  })

  it('refuses a name that is not a string', () => {
    expect(refusal(42)).toMatchObject({ code: 'INVALID_OPTION', option: 'scope.tenantHeader' })
  })

  it('accepts any token, in any case, and reads the header case-insensitively', async () => {
    const idempotency = createIdempotency({
      store: createMemoryIdempotencyStore(),
      scope: { tenantHeader: "X-Tenant_ID.v1!#$%&'*+^`|~" },
    })
    const scopes: string[] = []
    const request = (tenant: string): IdempotencyRequest => ({
      method: 'POST',
      route: '/charges',
      body: new Uint8Array(0),
      header: (name) =>
        name === "x-tenant_id.v1!#$%&'*+^`|~"
          ? tenant
          : name === 'idempotency-key'
            ? '"k"'
            : undefined,
    })
    const handler = async (ctx: { scope: string } | undefined): Promise<IdempotencyResponse> => {
      scopes.push(ctx!.scope)
      return { status: 201, headers: {}, body: new Uint8Array(0) }
    }
    await idempotency.handle(request('acme'), handler)
    await idempotency.handle(request('globex'), handler)
    expect(scopes).toEqual(['tenant:acme', 'tenant:globex'])
  })

  // The scope is stored in the record's primary key with the key: PostgreSQL refuses an entry
  // over 2,704 bytes with a bare error, SQLite stores it, so a long tenant value (or a long
  // string from a scope function) failed on one database only. Refused on every store alike,
  // as any unstorable scope is: 500 with INVALID_OPTION, the handler never runs.
  it('refuses a scope longer than maxScopeBytes before claiming', async () => {
    const store = createMemoryIdempotencyStore()
    const request = (tenant: string): IdempotencyRequest => ({
      method: 'POST',
      route: '/charges',
      body: new Uint8Array(0),
      header: (name) =>
        name === 'x-tenant' ? tenant : name === 'idempotency-key' ? 'k' : undefined,
    })
    let runs = 0
    const handler = async (): Promise<IdempotencyResponse> => {
      runs++
      return { status: 201, headers: {}, body: new Uint8Array(0) }
    }
    for (const scope of [{ tenantHeader: 'x-tenant' }, () => 'u'.repeat(maxScopeBytes + 1)]) {
      const idempotency = createIdempotency({ store, scope })
      await expect(
        idempotency.handle(request('t'.repeat(maxScopeBytes)), handler),
      ).rejects.toMatchObject({ code: 'INVALID_OPTION', option: 'scope' })
    }
    expect(runs).toBe(0)
    expect(store.size).toBe(0)
  })
})
