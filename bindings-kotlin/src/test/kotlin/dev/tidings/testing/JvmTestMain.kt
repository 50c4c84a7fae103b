package dev.tidings.testing

import java.lang.reflect.InvocationTargetException
import java.lang.reflect.Method
import kotlin.system.exitProcess

/** Marks a test method: public, no parameters, run on a fresh instance of its class by [JvmTestMain]. */
@Target(AnnotationTarget.FUNCTION)
@Retention(AnnotationRetention.RUNTIME)
annotation class Test

/** Marks a method run after every test of its class on the same instance, whether the test passed or not. */
@Target(AnnotationTarget.FUNCTION)
@Retention(AnnotationRetention.RUNTIME)
annotation class AfterEach

/** The outcome of one test. */
data class TestResult(val name: String, val failure: Throwable?, val millis: Long) {
    val passed: Boolean get() = failure == null
}

/**
 * The test runner `cargo xtask kotlin-test` uses (the `kotlin-compiler` npm package ships kotlin-test but no JUnit,
 * and the suite needs nothing else): runs every [Test] method of the given classes, one line per test with its
 * time, each failure with its stack trace, and a closing `kotlin: N passed, N failed` line. Exits non-zero when a
 * test failed or none ran. `KOTLIN_TEST_FILTER=<substring>` runs only the tests whose `Class.method` contains it.
 */
object JvmTestMain {
    @JvmStatic
    fun main(args: Array<String>) {
        require(args.isNotEmpty()) { "usage: JvmTestMain <test class>..." }
        val filter = System.getenv("KOTLIN_TEST_FILTER")?.takeIf { it.isNotBlank() }
        val results = args.flatMap { runClass(Class.forName(it), filter, verbose = true) }
        val failed = results.filterNot { it.passed }
        println()
        if (failed.isNotEmpty()) {
            println("Failed tests:")
            failed.forEach { println("  ${it.name}: ${it.failure.toString().lineSequence().first()}") }
        }
        println("kotlin: ${results.size - failed.size} passed, ${failed.size} failed")
        System.out.flush()
        exitProcess(if (failed.isEmpty() && results.isNotEmpty()) 0 else 1)
    }

    /** The [Test] methods of [testClass], sorted by name. */
    fun testMethods(testClass: Class<*>): List<Method> =
        testClass.declaredMethods.filter { it.isAnnotationPresent(Test::class.java) }.sortedBy { it.name }

    /** Runs every [Test] method of [testClass] (matching [filter]) on a fresh instance each, then its [AfterEach]. */
    fun runClass(testClass: Class<*>, filter: String? = null, verbose: Boolean = false): List<TestResult> {
        val after = testClass.declaredMethods.filter { it.isAnnotationPresent(AfterEach::class.java) }
        return testMethods(testClass)
            .map { "${testClass.simpleName}.${it.name}" to it }
            .filter { (name, _) -> filter == null || name.contains(filter) }
            .map { (name, method) ->
                if (verbose) {
                    println("-- $name")
                    System.out.flush()
                }
                val started = System.nanoTime()
                var failure: Throwable? = null
                try {
                    val instance = testClass.getDeclaredConstructor().newInstance()
                    try {
                        method.invoke(instance)
                    } catch (e: Throwable) {
                        failure = unwrap(e)
                    }
                    for (cleanUp in after) {
                        try {
                            cleanUp.invoke(instance)
                        } catch (e: Throwable) {
                            failure = failure ?: unwrap(e)
                        }
                    }
                } catch (e: Throwable) {
                    failure = unwrap(e)
                }
                val result = TestResult(name, failure, (System.nanoTime() - started) / 1_000_000)
                if (verbose) {
                    failure?.let {
                        println("FAILED $name")
                        it.printStackTrace(System.out)
                    }
                    println("   ${if (result.passed) "ok" else "FAILED"}  $name (${result.millis} ms)")
                    System.out.flush()
                }
                result
            }
    }

    private fun unwrap(e: Throwable): Throwable = if (e is InvocationTargetException) e.targetException ?: e else e
}
