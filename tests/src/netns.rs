//! Network namespace guard (see netns tests).
