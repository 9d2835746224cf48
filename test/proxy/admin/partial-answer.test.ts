// The admin API's 502 PARTIALLY_APPLIED answer is a well-formed problem: its title is the
// status's reason phrase, and it names the workers on each side.
import { describe, expect, it } from 'vitest'
import { PartiallyAppliedError } from '../../../src/proxy/admin/backend.js'
import { http } from '../runtime/helpers.js'
import { adminToken as token, useTestAdmin } from './admin-support.js'

const startAdmin = useTestAdmin()

describe('admin API partial answers', () => {
  it('answers 502 Bad Gateway with PARTIALLY_APPLIED', async () => {
    const backend = {
      services: async () => [{ pid: 1, services: [{ name: 'orders' }] }],
      config: async () => ({ services: new Map([['orders', {}]]) }),
      isolate: async () => {
        throw new PartiallyAppliedError('isolate', [1], [{ pid: 2, error: 'no answer' }])
      },
    }
    const admin = await startAdmin({ backend })
    const res = await http(admin.address().port, '/admin/services/orders/isolate', {
      method: 'POST',
      headers: { authorization: `Bearer ${token}` },
    })
    expect(res.status).toBe(502)
    expect(res.json()).toMatchObject({
      title: 'Bad Gateway',
      status: 502,
      code: 'PARTIALLY_APPLIED',
      appliedBy: [1],
      notAppliedBy: [{ pid: 2, error: 'no answer' }],
    })
  })
})
