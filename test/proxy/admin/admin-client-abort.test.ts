// A client that closed its connection to the admin API in the middle of a request body was
// logged as `admin request failed` at error level, as if the proxy had failed. It is the
// client's doing: logged at warn, as the gateway logs a request whose body never arrived
// (request.ts, `request refused` REQUEST_BODY_INCOMPLETE), and never at error.
import { connect } from 'node:net'
import { describe, expect, it } from 'vitest'
import { captureLog, eventually } from '../runtime/helpers.js'
import { adminToken as token, useTestAdmin } from './admin-support.js'

const startAdmin = useTestAdmin()

describe('a client leaving the admin API mid-request', () => {
  it('is logged at warn, not as a failure of the proxy', async () => {
    const log = captureLog()
    let switched = false
    let headRead: () => void = () => {}
    const head = new Promise<void>((resolve) => {
      headRead = resolve
    })
    const admin = await startAdmin({
      log,
      level: 'debug',
      backend: {
        config: async () => {
          headRead()
          return { listeners: [{ routes: [{ name: 'r' }] }] }
        },
        switchRoute: async () => {
          switched = true
        },
      },
    })
    const socket = connect(admin.address().port, '127.0.0.1')
    await new Promise<void>((resolve) => socket.once('connect', resolve))
    socket.write(
      `POST /admin/routes/r HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\n` +
        'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"targets":',
    )
    // Once the head is read (the route is looked up before the body), the client goes.
    await head
    socket.destroy()

    const abandoned = () => log.lines().filter((l) => l.msg === 'admin request abandoned')
    await eventually(() => abandoned().length === 1, 'the abandoned request logged', 3_000)
    expect(abandoned()[0]).toMatchObject({
      level: 'warn',
      component: 'admin',
      method: 'POST',
      path: '/admin/routes/r',
    })
    expect(log.lines().filter((l) => l.level === 'error')).toEqual([])
    expect(switched).toBe(false)
  })
})
