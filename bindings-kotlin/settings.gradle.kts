// Tidings for Android: a standalone Gradle build (Gradle 8.9+, JDK 17). Build the AAR from this directory, or
// use it from your app's build with `includeBuild("path/to/tidings/bindings-kotlin")`. See README.md.

pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}

dependencyResolutionManagement {
    repositoriesMode.set(RepositoriesMode.FAIL_ON_PROJECT_REPOS)
    repositories {
        google()
        mavenCentral()
    }
}

rootProject.name = "tidings-android"
