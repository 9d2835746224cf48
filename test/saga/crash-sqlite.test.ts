// The saga crash test on SQLite (worker processes sharing one database file); see crash-tests.ts.
import { crashTests } from './crash-tests.js'
import { sqliteDb } from './databases.js'

crashTests(sqliteDb)
