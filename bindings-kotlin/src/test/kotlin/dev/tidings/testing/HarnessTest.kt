package dev.tidings.testing

import kotlin.test.assertEquals
import kotlin.test.assertIs
import kotlin.test.assertTrue

/** The runner itself: a failing test is reported as failed (so the suite can fail), and clean-up always runs. */
class HarnessTest {
    class Fixture {
        @Test fun passes() = Unit

        @Test fun fails_an_assertion() = assertEquals(1, 2, "deliberately")

        @Test fun throws(): Unit = error("boom")

        fun not_a_test(): Unit = error("must not run")

        @AfterEach fun cleanUp() {
            cleanUps += 1
        }

        companion object {
            var cleanUps = 0
        }
    }

    @Test
    fun failures_are_reported_and_clean_up_runs_after_every_test() {
        Fixture.cleanUps = 0
        val results = JvmTestMain.runClass(Fixture::class.java).associateBy { it.name.substringAfter('.') }
        assertEquals(setOf("passes", "fails_an_assertion", "throws"), results.keys)
        assertTrue(results.getValue("passes").passed)
        assertIs<AssertionError>(results.getValue("fails_an_assertion").failure)
        assertIs<IllegalStateException>(results.getValue("throws").failure)
        assertEquals(3, Fixture.cleanUps)
    }

    @Test
    fun the_filter_selects_tests_by_name() {
        val results = JvmTestMain.runClass(Fixture::class.java, filter = "Fixture.pass")
        assertEquals(listOf("Fixture.passes"), results.map { it.name })
    }
}
